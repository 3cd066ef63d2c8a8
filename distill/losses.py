"""Distillation losses: one pure function each, computed in log space in fp32."""

from __future__ import annotations

import math

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


def embedding_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between student and teacher sentence embeddings, (B, D) each; mean."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def embedding_mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between sentence embeddings, (B, D) each (Reimers and Gurevych,
    2020, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation")."""
    return F.mse_loss(student.float(), teacher.float())


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between hidden states of mapped layers over real tokens, (B, T, D) each after the
    student's states went through a learned projection to the teacher's width (Jiao et al.,
    2020, "TinyBERT"); mask (B, T)."""
    m = mask.unsqueeze(-1).to(student.dtype)  # (B, T, 1)
    sq = (student.float() - teacher.float()).pow(2) * m
    return sq.sum() / (m.sum() * student.shape[-1]).clamp(min=1.0)


def relation_kd_loss(
    student_a: torch.Tensor,
    student_b: torch.Tensor,
    teacher_a: torch.Tensor,
    teacher_b: torch.Tensor,
    mask: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """KL(teacher || student) between self-attention relations softmax(A Bᵀ / sqrt(d)), with
    A, B split into `heads` relation heads so that student and teacher widths may differ
    (Wang et al., 2020/2021, "MiniLM" v1 and v2). With (A, B) = (Q, K) this matches the
    attention distributions, with (V, V) the value relations.

    Shapes: student_a/student_b (B, T, Ds), teacher_a/teacher_b (B, T, Dt), both widths
    divisible by `heads`; mask (B, T). Mean over heads and real query positions.
    """

    def relation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        bsz, t, d = a.shape
        a = a.float().view(bsz, t, heads, d // heads).transpose(1, 2)  # (B, R, T, d)
        b = b.float().view(bsz, t, heads, d // heads).transpose(1, 2)
        scores = a @ b.transpose(-1, -2) / math.sqrt(d // heads)  # (B, R, T, T)
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
        return F.log_softmax(scores, dim=-1)

    t_rel, s_rel = relation(teacher_a, teacher_b), relation(student_a, student_b)
    kl = (t_rel.exp() * (t_rel - s_rel)).sum(-1)  # (B, R, T)
    m = mask.to(kl.dtype)[:, None, :]  # (B, 1, T)
    return (kl * m).sum() / (m.sum() * heads).clamp(min=1.0)
