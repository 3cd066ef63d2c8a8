"""Teachers whose tokenizer is not the student's: the two tokenizations of one text aligned by
character, and universal logit distillation over sorted probabilities."""

import pytest
import torch

from tests.conftest import corpus


@pytest.fixture(scope="module")
def two_tokenizers():
    from distill.teachers import train_tokenizer

    return train_tokenizer(corpus(), 512), train_tokenizer(corpus()[::-1], 400)


def test_tokens_of_two_tokenizers_are_paired_where_both_start_at_the_same_character(two_tokenizers):
    from distill.tasks.text import align_to_teacher, char_starts

    student, teacher = two_tokenizers
    text = corpus()[3][:600]
    ids = student(text)["input_ids"]
    decoded, starts = char_starts(student, ids)
    assert decoded == student.decode(ids) and starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:]))
    teacher_ids, index = align_to_teacher(student, ids, teacher)
    assert teacher_ids == teacher(decoded, add_special_tokens=False)["input_ids"] and len(index) == len(ids)
    offsets = teacher(decoded, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    paired = [(j, k) for j, k in enumerate(index) if k >= 0]
    assert len(paired) > 0.5 * len(ids)  # most word starts agree
    for j, k in paired:  # the same first character of content (white space aside)
        s_text = student.decode([ids[j]]).lstrip()
        t_text = decoded[offsets[k][0] : offsets[k][1]].lstrip()
        assert s_text[:1] == t_text[:1] and s_text and t_text
    assert [k for k in index if k >= 0] == sorted(k for k in index if k >= 0)  # in order
    # one tokenizer against itself: every token paired with itself, but those of white space
    # alone (another tokenizer puts it in the next word's token)
    same_ids, same = align_to_teacher(student, ids, student)
    blank = [student.decode([t]).isspace() for t in ids]
    assert same_ids == ids and same == [-1 if b else j for j, b in enumerate(blank)] and sum(blank) < 0.1 * len(ids)
    # a block cut in the middle of a character leaves its pieces unpaired, never misplaced
    cut = student("naïve café ü", add_special_tokens=False)["input_ids"]
    _, starts = char_starts(student, cut)
    assert starts[0] == 0 and all(s == -1 or s >= 0 for s in starts)


def test_the_teachers_distribution_is_taken_at_the_aligned_position():
    from distill.tasks.text import ranked_at

    logits = torch.randn(2, 5, 30)
    positions = torch.tensor([[0, 2, -1], [4, -1, 1]])
    out = ranked_at(logits, positions, {"temperature": 2.0, "top_k": 4})
    want = torch.log_softmax(logits / 2.0, -1).topk(4, -1).values
    torch.testing.assert_close(out["teacher_ranked"][0, 1], want[0, 2])
    torch.testing.assert_close(out["teacher_ranked"][1, 2], want[1, 1])
    assert out["teacher_aligned"].tolist() == [[1, 1, 0], [1, 0, 1]]


def test_universal_logit_distillation_compares_sorted_probabilities_whatever_the_vocabulary():
    from distill.losses import uld_loss

    torch.manual_seed(0)
    student = torch.randn(2, 6, 50, requires_grad=True)
    own = torch.log_softmax(student.detach() / 2.0, -1).sort(-1, descending=True).values
    for k in (1, 5, 50):  # the student's own sorted distribution: nothing to learn
        assert uld_loss(student, own[..., :k], 2.0).item() == pytest.approx(0.0, abs=1e-6)
    # a teacher of another vocabulary (80 tokens) with the same sorted probabilities as a
    # shuffled student: zero, as the sorted distance does not see which token holds what
    shuffled = student.detach()[..., torch.randperm(50)]
    teacher = torch.cat([shuffled, torch.full((2, 6, 30), -1e4)], -1)
    ranked = torch.log_softmax(teacher / 2.0, -1).topk(10, -1).values
    assert uld_loss(student, ranked, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.log_softmax(torch.randn(2, 6, 80) * 3, -1).topk(10, -1).values
    loss = uld_loss(student, other, 1.0)
    assert 0 < loss.item() <= 2.0
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # positions without an aligned teacher position, or masked, count nothing
    aligned = torch.ones(2, 6, dtype=torch.int8)
    aligned[1, 2:] = 0
    changed = other.clone()
    changed[1, 2:] = torch.log_softmax(torch.randn(4, 80), -1).topk(10, -1).values
    a = uld_loss(student, other, 1.0, None, aligned)
    assert a.item() == pytest.approx(uld_loss(student, changed, 1.0, None, aligned).item(), rel=1e-6)
    mask = aligned.clone()
    assert a.item() == pytest.approx(uld_loss(student, changed, 1.0, mask).item(), rel=1e-6)
    # the whole-vocabulary sorted L1 bounds it from above (the tail is one bucket)
    full_t = torch.log_softmax(torch.randn(2, 6, 50) * 3, -1)
    s = torch.softmax(student.detach(), -1).sort(-1, descending=True).values
    whole = (s - full_t.exp().sort(-1, descending=True).values).abs().sum(-1).mean()
    top = uld_loss(student.detach(), full_t.topk(10, -1).values, 1.0)
    assert top.item() <= whole.item() + 1e-6 and uld_loss(student.detach(), full_t.topk(50, -1).values, 1.0).item() == pytest.approx(whole.item(), rel=1e-5)
