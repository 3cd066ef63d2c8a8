"""Distillation losses: one pure function each, computed in log space in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _log1mexp(log_mass: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler, 2012)."""
    x = log_mass.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_kd_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_indices: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher || student) at a temperature, from the teacher's top-k log-probabilities.

    Shapes: student_logits (B, T, V); teacher_logprobs and teacher_indices (B, T, K), the
    teacher's K most likely tokens at each position and their log-probabilities under
    softmax(teacher_logits / temperature); mask (B, T), 1 for positions that count.

    The teacher's mass outside its top K is one extra outcome, matched by the student's mass
    outside the same K tokens: the KL is exact over these K + 1 outcomes and a lower bound of
    the full-vocabulary KL (it equals it when the tail holds no mass). Scaled by
    temperature**2 as in Hinton et al., 2015, "Distilling the Knowledge in a Neural Network".
    Returns the mean over counted positions, a scalar.
    """
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    s_top = s_logp.gather(-1, teacher_indices.long())  # (B, T, K)
    t_top = teacher_logprobs.float()  # (B, T, K)
    t_tail = _log1mexp(torch.logsumexp(t_top, dim=-1))  # (B, T)
    s_tail = _log1mexp(torch.logsumexp(s_top, dim=-1))  # (B, T)
    kl = (t_top.exp() * (t_top - s_top)).sum(-1) + t_tail.exp() * (t_tail - s_tail)  # (B, T)
    kl = kl * temperature**2
    if mask is None:
        return kl.mean()
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


def next_token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token predictions. logits (B, T, V), targets (B, T); mean."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
