import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from distill.losses import next_token_ce, topk_kd_loss


def _topk(logits: torch.Tensor, k: int, temperature: float = 1.0):
    top = F.log_softmax(logits / temperature, dim=-1).topk(k, dim=-1)
    return top.values, top.indices


@pytest.mark.parametrize("k", [1, 5, 50])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_zero_for_identical_logits(k, temperature):
    logits = torch.randn(2, 7, 50)
    values, indices = _topk(logits, k, temperature)
    assert topk_kd_loss(logits, values, indices, temperature).item() == pytest.approx(0.0, abs=1e-5)


def test_non_negative_and_gradient_flows():
    torch.manual_seed(0)
    for _ in range(20):
        student = torch.randn(3, 5, 40, requires_grad=True)
        values, indices = _topk(torch.randn(3, 5, 40) * 3, 8)
        loss = topk_kd_loss(student, values, indices, 2.0)
        assert loss.item() >= -1e-6
        loss.backward()
        assert student.grad is not None and student.grad.abs().sum() > 0 and torch.isfinite(student.grad).all()


def test_full_vocabulary_matches_reference_kl():
    student, teacher = torch.randn(2, 6, 30), torch.randn(2, 6, 30)
    values, indices = _topk(teacher, 30, 2.0)
    ref = F.kl_div(
        F.log_softmax(student / 2.0, -1), F.log_softmax(teacher / 2.0, -1), log_target=True, reduction="none"
    )
    expected = ref.sum(-1).mean() * 4.0
    assert topk_kd_loss(student, values, indices, 2.0).item() == pytest.approx(expected.item(), rel=1e-4)


def test_topk_is_a_lower_bound_of_the_full_kl():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 6, 30), torch.randn(2, 6, 30)
    full = topk_kd_loss(student, *_topk(teacher, 30))
    for k in (1, 4, 16):
        assert topk_kd_loss(student, *_topk(teacher, k)).item() <= full.item() + 1e-5


def test_mask_ignores_positions_and_half_precision_teacher_is_finite():
    student, teacher = torch.randn(1, 4, 20), torch.randn(1, 4, 20)
    values, indices = _topk(teacher, 5)
    mask = torch.tensor([[1, 1, 0, 0]])
    masked = topk_kd_loss(student, values.half(), indices, 1.0, mask)
    first_two = topk_kd_loss(student[:, :2], values[:, :2], indices[:, :2], 1.0)
    assert masked.item() == pytest.approx(first_two.item(), rel=1e-2)
    # a fully masked batch is 0, not 0/0
    assert topk_kd_loss(student, values, indices, 1.0, torch.zeros(1, 4)).item() == 0.0


def test_confident_teacher_is_finite():
    teacher = torch.full((1, 2, 10), -1e4)
    teacher[..., 0] = 1e4  # all mass on one token: the tail is empty
    loss = topk_kd_loss(torch.randn(1, 2, 10), *_topk(teacher, 3))
    assert math.isfinite(loss.item())


def test_next_token_ce_matches_uniform():
    logits = torch.zeros(2, 3, 16)
    assert next_token_ce(logits, torch.zeros(2, 3, dtype=torch.long)).item() == pytest.approx(math.log(16))


def test_sequence_kd_is_cross_entropy_on_the_teachers_tokens_ignoring_where_it_ended():
    from distill.losses import next_token_ce, sequence_kd_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 11, requires_grad=True)
    seq = torch.tensor([[3, 5, 1, -100], [7, 1, -100, -100]])
    want = F.cross_entropy(logits[seq != -100], seq[seq != -100])
    assert sequence_kd_loss(logits, seq).item() == pytest.approx(want.item(), rel=1e-6)
    assert sequence_kd_loss(logits, seq).item() == next_token_ce(logits, seq).item()
    # a student that puts its mass on the teacher's tokens has (nearly) no loss, whatever it says after the end
    sure = torch.full((2, 4, 11), -30.0)
    sure[seq != -100, seq[seq != -100]] = 30.0
    assert sequence_kd_loss(sure, seq).item() < 1e-6
    sequence_kd_loss(logits, seq).backward()
    assert logits.grad[seq == -100].abs().max() == 0 and logits.grad[seq != -100].abs().max() > 0


def test_embedding_losses_are_zero_for_identical_inputs_and_positive_otherwise():
    from distill.losses import embedding_cosine_loss, embedding_mse_loss, hidden_state_loss

    e = torch.randn(5, 16)
    assert embedding_cosine_loss(e, e).item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_mse_loss(e, e).item() == 0.0
    assert embedding_cosine_loss(e, 3 * e).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert embedding_cosine_loss(e, -e).item() == pytest.approx(2.0)
    other = torch.randn(5, 16)
    assert embedding_cosine_loss(e, other) > 0 and embedding_mse_loss(e, other) > 0
    h, mask = torch.randn(2, 6, 8), torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    assert hidden_state_loss(h, h, mask).item() == 0.0
    changed = h.clone()
    changed[1, 4:] += 5.0  # padding positions do not count
    assert hidden_state_loss(changed, h, mask).item() == 0.0


def test_relation_loss_properties():
    from distill.losses import relation_kd_loss

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 5, 12) for _ in range(3))
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    assert relation_kd_loss(q, k, q, k, mask, heads=3).item() == pytest.approx(0.0, abs=1e-6)
    # widths may differ: a 6-wide student against a 12-wide teacher, 3 relation heads
    sq = torch.randn(2, 5, 6, requires_grad=True)
    loss = relation_kd_loss(sq, sq, v, v, mask, heads=3)
    assert loss.item() > 0
    loss.backward()
    assert sq.grad is not None and torch.isfinite(sq.grad).all() and sq.grad.abs().sum() > 0


def test_embedding_fidelity():
    from distill.tasks.embedding import embedding_fidelity

    torch.manual_seed(0)
    t = torch.randn(30, 8)
    same = embedding_fidelity(t, t)
    assert same == pytest.approx({"cosine": 1.0, "spearman": 1.0, "retrieval": 1.0})
    rotated = t @ torch.linalg.qr(torch.randn(8, 8)).Q  # same geometry, other coordinates
    r = embedding_fidelity(rotated, t)
    assert r["spearman"] == pytest.approx(1.0) and r["retrieval"] == pytest.approx(1.0) and r["cosine"] < 0.9
    noise = embedding_fidelity(torch.randn(30, 8), t)
    assert noise["spearman"] < 0.5 and noise["retrieval"] < 0.7
    # A student that maps ten sentences to one point ties 45 of its similarities: they share a
    # rank (as scipy and the textbook rank them), not an order that depends on the sort kernel.
    collapsed = t.clone()
    collapsed[:10] = t[0]
    iu = torch.triu_indices(30, 30, offset=1)
    sims = [F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T for x in (collapsed, t)]
    want = stats.spearmanr(*[s[iu[0], iu[1]].double().numpy() for s in sims])[0]
    assert embedding_fidelity(collapsed, t)["spearman"] == pytest.approx(want, rel=1e-12)


def test_registered_terms_bind_their_inputs_by_name_and_vanish_on_the_teachers_own_outputs():
    from distill.losses import LOSSES, mapped_hidden_loss, minilm_relation_loss
    from distill.objective import allowed_terms
    from distill.tasks import TASKS

    # every registered term is allowed by some task, and needs only outputs that task computes
    for name in LOSSES:
        assert any(name in allowed_terms(t) for t in TASKS.values()), name
    torch.manual_seed(0)
    h = [torch.randn(2, 5, 8) for _ in range(3)]  # student states, already at the teacher's width
    teacher = torch.stack([h[0], torch.randn(2, 5, 8), h[1], h[2]], dim=1)  # (B, Lt+1, T, D)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    values = {"student_hidden": h, "teacher_hidden": teacher, "layer_map": [0, 2, 3], "mask": mask, "unused": 1}
    assert LOSSES["hidden"](values).item() == 0.0  # each student layer against the one it came from
    assert mapped_hidden_loss(h, teacher, [0, 1, 3], mask).item() > 0
    q, k, v = (torch.randn(2, 5, 12) for _ in range(3))
    assert minilm_relation_loss(q, k, v, q, k, v, mask, 3).item() == pytest.approx(0.0, abs=1e-6)
    assert minilm_relation_loss(q, k, v, k, q, v, mask, 3).item() > 0
