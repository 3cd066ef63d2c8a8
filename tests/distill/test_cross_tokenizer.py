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
    from distill.tasks.text import align_to_teacher, token_spans

    student, teacher = two_tokenizers
    text = corpus()[3][:600]
    ids = student(text)["input_ids"]
    decoded, spans = token_spans(student, ids)
    assert decoded == student.decode(ids) and spans[0][0] == 0 and all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))
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
    # packed documents: the student's EOS between them is the teacher's, aligned with it
    eos = student.eos_token_id
    a, b = student("first part", add_special_tokens=False)["input_ids"], student("second", add_special_tokens=False)["input_ids"]
    joined, where = align_to_teacher(student, [*a, eos, *b], teacher)
    assert joined[where[len(a)]] == teacher.eos_token_id and where[len(a) + 1] == where[len(a)] + 1
    # characters of two bytes ("ï", "é", "ü") take two tokens here: the first of them starts the
    # character, the second starts nothing; a blank token starts nothing either
    cut = student("naïve café ü", add_special_tokens=False)["input_ids"]
    assert student.decode([cut[2]]) == student.decode([cut[3]]) == "\ufffd"  # "ï" in two pieces
    _, where = align_to_teacher(student, cut, student)
    assert where == [0, 1, 2, -1, 4, 5, 6, 7, 8, -1, -1, 11, -1]
    # a text cut inside a character: the piece left of it has no span of its own
    text, spans = token_spans(student, cut[3:])
    assert text.startswith("\ufffd") and spans[0] == (-1, -1) and spans[1] == (1, 3)


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


def _teacher_on_itself(folder, auto_class: str):
    """A teacher loaded as one of another tokenizer whose 'other' tokenizer is its own."""
    import transformers

    from distill.tasks.base import Teacher
    from distill.teachers import TeacherSource

    model = getattr(transformers, auto_class).from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    source = TeacherSource(str(folder), None, False, "self")
    return Teacher(model, tokenizer, source, student_tokenizer=tokenizer), model, tokenizer


def test_a_causal_teacher_aligned_with_its_own_tokens_gives_its_own_distribution_at_each_position(teacher_dirs):
    """Position by position, no shift: student position p predicts token p + 1, and so does the
    teacher position before the teacher token aligned with it (here, the same one)."""
    from distill.tasks import get_task
    from distill.tasks.base import Batch

    teacher, model, tokenizer = _teacher_on_itself(teacher_dirs["gpt2"], "AutoModelForCausalLM")
    text = corpus()[5][:400]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:30]
    tokens = torch.tensor([ids, [*ids[:10], tokenizer.eos_token_id, *ids[11:]]])
    params = {"temperature": 2.0, "top_k": 5}
    out = get_task("causal-lm").teacher_outputs(teacher, Batch({"input_ids": tokens}), {"ranked"}, params)
    assert out["teacher_ranked"].shape == (2, 29, 5)
    with torch.no_grad():
        own = torch.log_softmax(model(input_ids=tokens).logits[:, :-1] / 2.0, -1).topk(5, -1).values
    aligned = out["teacher_aligned"].bool()
    blank = torch.tensor([[tokenizer.decode([t]).isspace() for t in row[1:]] for row in tokens.tolist()])
    assert torch.equal(aligned, ~blank)  # every position whose next token holds a character, the EOS included
    torch.testing.assert_close(out["teacher_ranked"][aligned], own[aligned], rtol=1e-4, atol=1e-4)


def test_a_translation_teacher_aligned_with_its_own_tokens_gives_its_own_distribution_at_each_position(translation_teacher):
    """Decoder position j predicts label j on both sides; the two EOS are aligned."""
    import numpy as np

    from distill.tasks import get_task
    from distill.tasks.base import Batch
    from distill.tasks.translation import _forced

    teacher, model, tokenizer = _teacher_on_itself(translation_teacher, "AutoModelForSeq2SeqLM")
    task = get_task("translation")
    pairs = [("the republic of france", "die französische republik"), ("germany", "deutschland")]
    src = tokenizer([s for s, _ in pairs], padding=True, return_tensors="pt")
    tgt = tokenizer(text_target=[t for _, t in pairs], padding=True, return_tensors="pt")
    batch = Batch({"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": tgt["input_ids"],
                   "decoder_attention_mask": tgt["attention_mask"]})  # fmt: skip
    params = {"temperature": 1.0, "top_k": 4}
    out = task.teacher_outputs(teacher, batch, {"ranked"}, params)
    with torch.no_grad():
        own = torch.log_softmax(_forced(model, batch).logits, -1).topk(4, -1).values
    aligned = out["teacher_aligned"].bool()
    real = tgt["attention_mask"].bool()
    assert not (aligned & ~real).any() and aligned[0, int(real[0].sum()) - 1]  # the EOS is aligned
    # every token but those of white space alone (and the space this tokenizer puts first)
    blank = np.array([[not tokenizer.decode([t]).strip() and t != tokenizer.eos_token_id for t in row] for row in tgt["input_ids"].tolist()])
    assert torch.equal(aligned, real & ~torch.from_numpy(blank))
    torch.testing.assert_close(out["teacher_ranked"][aligned], own[aligned], rtol=1e-4, atol=1e-4)
