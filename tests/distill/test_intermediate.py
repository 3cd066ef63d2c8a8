"""Intermediate layers: layer maps, the attention-map KL by its properties, and projections
that train with the student, resume with it and never ship."""

import pytest
import torch

from distill.errors import InputError
from distill.intermediate import Intermediate, Stack, check_layer_map, layer_pairs
from distill.losses import attention_kl_loss, attention_map_kl


def test_layer_maps():
    sliced = Stack(3, 6, 16, 32, 2, 4, pick="every_other")
    assert layer_pairs("init", sliced) == [(0, 0), (1, 2), (2, 4), (3, 6)]  # the layers it was taken from
    assert layer_pairs("init", Stack(2, 6, 16, 32, 2, 4)) == [(0, 0), (1, 1), (2, 6)]  # evenly, the last included
    assert layer_pairs("uniform", Stack(3, 6, 16, 32, 2, 4)) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert layer_pairs("uniform", Stack(4, 2, 16, 32, 2, 4)) == [(0, 0), (1, 1), (2, 1), (3, 2), (4, 2)]
    assert layer_pairs("last-2", sliced) == [(2, 5), (3, 6)]
    assert layer_pairs("last-9", sliced) == [(1, 4), (2, 5), (3, 6)]  # at most the student's depth
    assert layer_pairs([0, 1, 1, 6], sliced) == [(0, 0), (1, 1), (2, 1), (3, 6)]
    with pytest.raises(InputError, match=r"^loss\.layer_map: .* 4 teacher states"):
        layer_pairs([0, 6], sliced)
    with pytest.raises(InputError, match=r"0 to 6"):
        layer_pairs([0, 1, 2, 7], sliced)
    for bad in ("last", "last-0", "every", [], [1, -1], [1.5]):
        with pytest.raises(ValueError, match="^layer_map: "):
            check_layer_map(bad)


def _maps(b, h, t, causal=False, scale=1.0):
    scores = torch.randn(b, h, t, t) * scale
    if causal:
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def test_attention_kl_vanishes_on_equal_maps_and_is_positive_otherwise():
    torch.manual_seed(0)
    for causal in (False, True):
        teacher = _maps(2, 4, 6, causal)
        assert attention_map_kl(teacher, teacher, None).item() == pytest.approx(0.0, abs=1e-6)
        student = _maps(2, 4, 6, causal)
        assert attention_map_kl(student, teacher, None).item() > 0
    # a student of 2 heads against a teacher of 4: the teacher's heads averaged in pairs
    teacher = _maps(2, 4, 6)
    grouped = teacher.view(2, 2, 2, 6, 6).mean(2)
    assert attention_map_kl(grouped, teacher, None).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_map_kl(_maps(2, 2, 6), teacher, None).item() > 0


def test_attention_kl_ignores_masked_queries_and_keys_and_stays_finite_on_peaked_maps():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    key_mask = torch.zeros(2, 1, 1, 6).masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    teacher = (torch.randn(2, 2, 6, 6) + key_mask).softmax(-1)  # padding keys get no weight
    student = torch.randn(2, 2, 6, 6, requires_grad=True)
    base = attention_kl_loss([((student + key_mask).softmax(-1), teacher, mask)])
    changed = student.detach().clone()
    changed[0, :, 4:] = torch.randn(2, 2, 6)  # queries at padded positions
    again = attention_kl_loss([((changed + key_mask).softmax(-1), teacher, mask)])
    assert again.item() == pytest.approx(base.item(), rel=1e-6)
    base.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    peaked = _maps(2, 2, 6, causal=True, scale=80.0)  # near one-hot
    s = torch.randn(2, 2, 6, 6, requires_grad=True)
    loss = attention_map_kl(s.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf")).softmax(-1), peaked, None)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.isfinite(attention_map_kl(peaked.to(dtype), peaked.to(dtype), None))


def test_heads_that_do_not_divide_the_teachers_are_refused_for_attention_only():
    stack = Stack(2, 2, 12, 16, 3, 4)
    Intermediate({"decoder": stack}, "init", attention=False)
    with pytest.raises(InputError, match=r"^loss\.attention: .* 3 heads .* teacher's 4"):
        Intermediate({"decoder": stack}, "init", attention=True)


def test_projections_exist_where_widths_differ_and_start_alike():
    stacks = {"encoder": Stack(2, 2, 16, 32, 2, 4), "decoder": Stack(2, 2, 32, 32, 4, 4)}
    a, b = Intermediate(stacks, "init", False), Intermediate(stacks, "init", False)
    assert set(a.projections) == {"encoder"}  # none where the widths agree
    assert torch.equal(a.projections["encoder"].weight, b.projections["encoder"].weight)
    state = torch.get_rng_state()
    Intermediate(stacks, "init", False)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left as it was
