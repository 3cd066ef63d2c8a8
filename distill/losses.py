"""Distillation losses: one pure function each, computed in log space in fp32, and the registry.

A registered term is a pure function plus one line in `LOSSES` that says which teacher outputs
it needs (the teacher cache is built from the union of the needs of a study's terms). Its
parameters are named from one vocabulary, and each micro-batch binds them by name:

- student side: `student_logits` (B, T, V) next-token logits; `student_embedding` (B, D)
  sentence embeddings in the teacher's space; `student_query` / `student_key` /
  `student_value` (B, T, Ds), its last layer's projections;
- teacher side (the `needs` groups): "topk" gives `teacher_logprobs` and `teacher_indices`
  (B, T, K), or, with the loss parameter `full_vocabulary` and a live teacher, "logits" gives
  `teacher_logits` (B, T, V) in their place (the divergences take either); "sequences" gives
  `teacher_sequence` and `teacher_sequence_mask` (B, L), the teacher's beam-search output for
  each source, which the task runs the student on (`student_sequence_logits`,
  `sequence_labels`); "sentence_embedding" gives `teacher_embedding` (B, D); "qkv" gives
  `teacher_query` / `teacher_key` / `teacher_value` (B, T, D);
- both sides of intermediate layers, paired by the layer map (`distill.intermediate`, from
  the "hidden_states" and "attentions" groups): `hidden_pairs` and `attention_pairs`;
- the batch and the study: `labels` (B, T) next tokens, `mask` (B, T) 1 for real tokens (None
  when every position counts), `relation_heads`, and the loss parameters of the spec's
  `[loss]` (`temperature`).

A task allows every registered term whose inputs it can provide (see `distill.objective`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def _log1mexp(log_mass: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler, 2012)."""
    x = log_mass.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


CHUNK_ELEMENTS = 1 << 25
"""Positions per chunk of a divergence: at most this many fp32 vocabulary entries (128 MiB) are
alive at once; a chunk's softmax is recomputed in the backward pass rather than kept."""


@dataclasses.dataclass(frozen=True)
class Support:
    """Teacher and student log-probabilities (..., S) on one support, fp32: the whole vocabulary,
    or the teacher's top k plus one tail bucket (the last entry) for the rest."""

    teacher: torch.Tensor
    student: torch.Tensor
    tail: bool
    indices: torch.Tensor | None = None
    """the token of each top-k entry (..., K); None on the whole vocabulary"""

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the support (the top k, then the tail bucket)."""
        return x[..., :-1].sum(-1) + x[..., -1] if self.tail else x.sum(-1)

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """The log-probabilities (..., S) of the reference token `labels` (...) with certainty on
        this support: its own entry, or the tail bucket when it is outside the teacher's top k."""
        if self.indices is None:
            where = labels.clamp(min=0).long()
        else:
            hit = self.indices.long() == labels.long().unsqueeze(-1)  # (..., K)
            where = torch.where(hit.any(-1), hit.float().argmax(-1), self.indices.shape[-1])
        out = torch.full_like(self.teacher, -math.inf)
        return out.scatter(-1, where.unsqueeze(-1), 0.0)


def support(
    student_logits: torch.Tensor,
    temperature: float,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> Support:
    """Both distributions at `temperature` on the support the teacher's outputs allow: full
    logits (a live teacher) give the whole vocabulary; the cached top k (log-probabilities at
    the temperature, and indices) give those k tokens and one bucket for the rest of each
    distribution's mass."""
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if teacher_logits is not None:
        return Support(F.log_softmax(teacher_logits.float() / temperature, dim=-1), s_logp, tail=False)
    s_top = s_logp.gather(-1, teacher_indices.long())  # (..., K)
    t_top = teacher_logprobs.float()
    t_tail = _log1mexp(torch.logsumexp(t_top, dim=-1, keepdim=True))
    s_tail = _log1mexp(torch.logsumexp(s_top, dim=-1, keepdim=True))
    return Support(torch.cat([t_top, t_tail], -1), torch.cat([s_top, s_tail], -1), tail=True, indices=teacher_indices)


def _kl(sup: Support, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position from log-probabilities on the support."""
    return sup.total(p.exp() * (p - q))


def _mixture(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """log(weight * exp(a) + (1 - weight) * exp(b)), stably."""
    if weight in (0.0, 1.0):
        return a if weight else b
    return torch.logsumexp(torch.stack([a + math.log(weight), b + math.log1p(-weight)]), dim=0)


def _forward_kl(sup: Support, params: dict[str, float]) -> torch.Tensor:
    return _kl(sup, sup.teacher, sup.student)


def _reverse_kl(sup: Support, params: dict[str, float]) -> torch.Tensor:
    return _kl(sup, sup.student, sup.teacher)


def _generalized_jsd(sup: Support, params: dict[str, float]) -> torch.Tensor:
    beta = params["jsd_beta"]
    m = _mixture(sup.teacher, sup.student, beta)
    return beta * _kl(sup, sup.teacher, m) + (1 - beta) * _kl(sup, sup.student, m)


def _skew_kl(sup: Support, params: dict[str, float]) -> torch.Tensor:
    return _kl(sup, sup.teacher, _mixture(sup.teacher, sup.student, params["skew_alpha"]))


def _skew_reverse_kl(sup: Support, params: dict[str, float]) -> torch.Tensor:
    return _kl(sup, sup.student, _mixture(sup.student, sup.teacher, params["skew_alpha"]))


def _total_variation(sup: Support, params: dict[str, float]) -> torch.Tensor:
    return 0.5 * sup.total((sup.teacher.exp() - sup.student.exp()).abs())


def _self_evolution_prior(sup: Support, labels: torch.Tensor) -> torch.Tensor:
    """Self-evolution KD's prior knowledge R: the reference one-hot and the teacher's
    distribution, half and half."""
    return _mixture(sup.one_hot(labels), sup.teacher, 0.5)


def _self_evolution_difficulty(sup: Support, params: dict[str, float], labels: torch.Tensor) -> torch.Tensor:
    return _kl(sup, _self_evolution_prior(sup, labels), sup.student)


def self_evolution_shares(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    temperature: float,
    counted: torch.Tensor,
    prior: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-evolution KD's first stage, without gradient: which counted positions (B, T) are
    hard (difficulty KL(R || Q) above the micro-batch's mean d̄) and each one's prior share
    a = `prior` x (1 - d̄ / d), 0 elsewhere. `teacher`: (teacher_logprobs, teacher_indices,
    teacher_logits) as `support` takes them."""
    with torch.no_grad():
        hardness = positionwise(_self_evolution_difficulty, student_logits.detach(), *teacher, temperature, extras=(labels,))
        mean = hardness[counted].mean() if counted.any() else hardness.new_zeros(())
        hard = counted & (hardness > mean)
        share = torch.where(hard, prior * (1 - mean / hardness.clamp(min=1e-12)), 0.0).clamp(0.0, 1.0)
    return hard, share


_DIAGNOSTICS: dict[str, dict[str, torch.Tensor | float]] = {}


def note(term: str, **sums: torch.Tensor | float) -> None:
    """Add to what a term reports of itself (sums over the micro-batches since the last
    `take_diagnostics`; tensors are kept on their device, so that noting never waits for it)."""
    kept = _DIAGNOSTICS.setdefault(term, {})
    for key, value in sums.items():
        value = value.detach() if isinstance(value, torch.Tensor) else value
        kept[key] = kept[key] + value if key in kept else value


def take_diagnostics() -> dict[str, dict[str, float]]:
    """What the terms reported since the last call (sums by term), and start afresh. The
    training loop logs it at every validation and at the end of a run."""
    taken = {term: {key: float(value) for key, value in sums.items()} for term, sums in _DIAGNOSTICS.items()}
    _DIAGNOSTICS.clear()
    return taken


def describe_diagnostics(taken: dict[str, dict[str, float]]) -> str:
    """`take_diagnostics()` in words, for the log."""
    parts = []
    for term, sums in taken.items():
        if term == "self_evolution_kd" and sums.get("tokens"):
            gradient = sums["hard_gradient"] / sums["gradient"] if sums.get("gradient") else float("nan")
            parts.append(
                f"self-evolution KD: {sums['hard_tokens'] / sums['tokens']:.1%} of tokens hard "
                f"(mean prior share {sums['prior'] / max(sums['hard_tokens'], 1.0):.2f}), "
                f"carrying {gradient:.1%} of its gradient"
            )
    return "; ".join(parts)


class _GradientShare(torch.autograd.Function):
    """The identity, which notes in the backward pass how much of the gradient on the logits
    (L1 over the vocabulary, summed over positions) falls on the `hard` positions."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, hard: torch.Tensor, term: str) -> torch.Tensor:
        ctx.save_for_backward(hard)
        ctx.term = term
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (hard,) = ctx.saved_tensors
        per = torch.linalg.vector_norm(grad.detach(), 1, dim=-1, dtype=torch.float32)  # (B, T)
        note(ctx.term, gradient=per.sum(), hard_gradient=(per * hard).sum())
        return grad, None, None


def divergence(
    kind: Callable[..., torch.Tensor],
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None,
    teacher_indices: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    temperature: float,
    mask: torch.Tensor | None,
    params: dict[str, float] | None = None,
    chunk: int | None = None,
    extras: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """A divergence between teacher and student next-token distributions, mean over the counted
    positions (mask (B, T), 1 where a position counts; None: all), scaled by temperature**2 as
    in Hinton et al., 2015. Positions are taken `chunk` at a time (default: as many as
    `CHUNK_ELEMENTS` allows for the vocabulary), each chunk's softmax recomputed in the
    backward pass, so that memory stays bounded for 150k-token vocabularies. `extras`, (B, T)
    each, go to `kind` after the support and the parameters, position by position."""
    values = positionwise(
        kind, student_logits, teacher_logprobs, teacher_indices, teacher_logits, temperature, params, chunk, extras
    )
    return _mean_over(values * temperature**2, mask)


def _mean_over(values: torch.Tensor, counted: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-position `values` (B, T) over the positions `counted` (B, T) marks
    (None: all of them); what the others hold, even a NaN, counts nothing."""
    if counted is None:
        return values.mean()
    counted = counted.bool()
    return torch.where(counted, values, 0.0).sum() / counted.sum().clamp(min=1)


def positionwise(
    kind: Callable[..., torch.Tensor],
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None,
    teacher_indices: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    temperature: float,
    params: dict[str, float] | None = None,
    chunk: int | None = None,
    extras: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """`kind` at each position (B, T), in chunks as `divergence` takes them."""
    params = params or {}

    def per_position(s: torch.Tensor, *t: torch.Tensor | None) -> torch.Tensor:
        return kind(support(s, temperature, *t[:3]), params, *t[3:])

    return chunked(per_position, student_logits, (teacher_logprobs, teacher_indices, teacher_logits, *extras), chunk)


def chunked(
    per_position: Callable[..., torch.Tensor],
    student_logits: torch.Tensor,
    given: tuple[torch.Tensor | None, ...],
    chunk: int | None = None,
) -> torch.Tensor:
    """`per_position(logits (n, V), *given (n, ...))` at each position (B, T), over positions
    `chunk` at a time (default: as many as `CHUNK_ELEMENTS` allows for the vocabulary), each
    chunk recomputed in the backward pass rather than kept."""
    chunk = chunk or max(1, CHUNK_ELEMENTS // student_logits.shape[-1])
    lead = student_logits.shape[:-1]
    rest = [None if x is None else x.flatten(0, len(lead) - 1) for x in given]
    flat = student_logits.flatten(0, len(lead) - 1)
    n = flat.shape[0]
    if n <= chunk:
        values = per_position(flat, *rest)
    else:
        from torch.utils.checkpoint import checkpoint

        parts = []
        for start in range(0, n, chunk):
            rows = [None if x is None else x[start : start + chunk] for x in (flat, *rest)]
            grad = torch.is_grad_enabled() and flat.requires_grad
            parts.append(checkpoint(per_position, *rows, use_reentrant=False) if grad else per_position(*rows))
        values = torch.cat(parts)
    return values.view(lead)


def _sorted_l1(student_logits: torch.Tensor, teacher_ranked: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per position (n,): the L1 distance between the teacher's k largest probabilities and
    the student's, rank by rank, plus the difference of the masses outside them."""
    k = teacher_ranked.shape[-1]
    s_top = torch.softmax(student_logits.float() / temperature, dim=-1).topk(k, dim=-1).values  # (n, k), sorted
    t_top = teacher_ranked.float().exp()
    tails = (1 - s_top.sum(-1)).clamp(min=0) - (1 - t_top.sum(-1)).clamp(min=0)
    return (s_top - t_top).abs().sum(-1) + tails.abs()


def topk_kd_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher || student) at a temperature: the forward KL of classic distillation.

    Shapes: student_logits (B, T, V); the teacher as its top k (teacher_logprobs and
    teacher_indices (B, T, K): its K most likely tokens at each position and their
    log-probabilities under softmax(teacher_logits / temperature)) or as full logits
    teacher_logits (B, T, V), from a live teacher; mask (B, T), 1 for positions that count.

    On the top k, the teacher's mass outside them is one extra outcome, matched by the
    student's mass outside the same K tokens: the KL is exact over these K + 1 outcomes and a
    lower bound of the full-vocabulary KL (it equals it when the tail holds no mass). Scaled by
    temperature**2 as in Hinton et al., 2015, "Distilling the Knowledge in a Neural Network".
    Returns the mean over counted positions, a scalar.
    """
    return divergence(_forward_kl, student_logits, teacher_logprobs, teacher_indices, teacher_logits, temperature, mask)


def reverse_kl_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(student || teacher), token by token: mode-seeking, the student puts its mass where
    the teacher is sure (the token-level form MiniLLM uses, Gu et al., ICLR 2024). Inputs and
    support as `topk_kd_loss`."""
    return divergence(_reverse_kl, student_logits, teacher_logprobs, teacher_indices, teacher_logits, temperature, mask)


def jsd_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024), with P the
    teacher, Q the student and M = beta P + (1 - beta) Q:
    JSD(beta) = beta KL(P || M) + (1 - beta) KL(Q || M), for 0 < beta < 1; it behaves like the
    forward KL (scaled by beta) near beta = 0 and like the reverse KL near beta = 1. Inputs and
    support as `topk_kd_loss`."""
    params = {"jsd_beta": jsd_beta}
    return divergence(_generalized_jsd, student_logits, teacher_logprobs, teacher_indices, teacher_logits, temperature, mask, params)


def skew_kl_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    skew_alpha: float = 0.1,
) -> torch.Tensor:
    """Skew KL of DistiLLM (Ko et al., ICML 2024): KL(P || alpha P + (1 - alpha) Q), P the
    teacher, Q the student; bounded where the student has no mass, the forward KL at alpha = 0.
    Inputs and support as `topk_kd_loss`."""
    params = {"skew_alpha": skew_alpha}
    return divergence(_skew_kl, student_logits, teacher_logprobs, teacher_indices, teacher_logits, temperature, mask, params)


def skew_reverse_kl_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    skew_alpha: float = 0.1,
) -> torch.Tensor:
    """Skew reverse KL of DistiLLM (Ko et al., ICML 2024): KL(Q || (1 - alpha) P + alpha Q),
    P the teacher, Q the student; the reverse KL at alpha = 0. Inputs and support as
    `topk_kd_loss`."""
    params = {"skew_alpha": skew_alpha}
    return divergence(
        _skew_reverse_kl, student_logits, teacher_logprobs, teacher_indices, teacher_logits, temperature, mask, params
    )


def total_variation_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Total variation distance, half the L1 distance between the two distributions (in
    [0, 1] before the temperature**2 scaling). Inputs and support as `topk_kd_loss`."""
    return divergence(
        _total_variation, student_logits, teacher_logprobs, teacher_indices, teacher_logits, temperature, mask
    )


def self_evolution_kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    self_evolution_prior: float = 1.0,
) -> torch.Tensor:
    """Self-evolution KD (Song et al., COLING 2025, "Self-Evolution Knowledge Distillation for
    LLM-based Machine Translation", arXiv 2412.15303): word-level KD whose tokens that are hard
    for the student learn from the teacher's distribution blended with prior knowledge, by a
    share that grows with the token's difficulty.

    With P the teacher, Q the student (both at `temperature`, on the support of
    `topk_kd_loss`) and y the reference token (`labels`), at every counted position i:
    1. prior R = (onehot(y) + P) / 2 (on the top k, a reference outside it is the tail bucket);
    2. difficulty d_i = KL(R || Q), without gradient, and d̄ its mean over the micro-batch's
       counted positions;
    3. a token is hard where d_i > d̄; its prior share is a_i = `self_evolution_prior` x
       (1 - d̄ / d_i), which is 0 at the mean and grows towards the parameter with the
       difficulty; easy tokens have a_i = 0;
    4. the target is T_i = (1 - a_i) P + a_i R = (1 - a_i / 2) P + (a_i / 2) onehot(y), and the
       loss (1 - a_i / 2) temperature**2 KL(P || Q) + (a_i / 2) CE(y, Q at temperature 1): the
       cross-entropy to T_i up to a constant, with the reference's part taken at temperature
       1 as the cross-entropy term takes it (a one-hot target at a higher temperature would
       ask for ever larger logits); mean over counted positions.
    Easy tokens learn as in `topk_kd_loss`. At temperature 1 the gradient on the logits is
    Q - T_i: on a hard token it differs from forward KL's Q - P by a_i (onehot(y) - P) / 2, at
    most a_i (1 - P(y)) in L1, and pulls the reference up at least as hard, so hard tokens
    learn at full strength.

    Where each part comes from. The paper (its abstract and a summary of its method; its
    method section was not available to us): two stages, a per-token difficulty from the KL
    between a blend of the reference one-hot and the teacher's distribution and the
    student's; prior knowledge (teacher and reference) mixed in for hard tokens only, by a
    ratio that depends on the token's difficulty. The related work (Peng et al., ACL 2023,
    token-level self-evolution training; Zhong et al., 2023, its code): hard tokens chosen
    afresh from the model's current per-token losses at every step, and the prior put into
    the target, with nothing of it differentiated. Our choices: the half-and-half blend R,
    the micro-batch's mean difficulty as the threshold (so the hard set follows the
    student's progress, and no constant sets its size), the share 1 - d̄ / d_i, and the target
    form, which replaces the paper's proxy a R + (1 - a) Q on the student's side: KL(P || a R
    + (1 - a) Q) scales the gradient on a logit j by (1 - a) Q_j / M_j (M the proxy), which
    all but vanishes where the student is worst (0.2 % of forward KL's on a reference the
    student gives 0.002, the teacher 0.82; `benchmarks/recipes.py` measures both forms).

    The share of hard tokens, their mean prior share and the share of this term's gradient
    they carry are noted (`take_diagnostics`) and logged at every validation.
    """
    teacher = (teacher_logprobs, teacher_indices, teacher_logits)
    counted = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
    hard, share = self_evolution_shares(student_logits, labels, teacher, temperature, counted, self_evolution_prior)
    note("self_evolution_kd", tokens=counted.sum(), hard_tokens=hard.sum(), prior=share.sum())
    if student_logits.requires_grad and torch.is_grad_enabled():
        student_logits = _GradientShare.apply(student_logits, hard, "self_evolution_kd")

    def per_position(s: torch.Tensor, *t: torch.Tensor | None) -> torch.Tensor:
        y, a, h = t[3:]
        sup = support(s, temperature, *t[:3])
        kl = _kl(sup, sup.teacher, sup.student) * temperature**2
        ce = F.cross_entropy(s.float(), y.long(), ignore_index=-100, reduction="none")  # the reference at T = 1
        half = a / 2  # the reference's part of the target (R holds it half and half with P)
        return (1 - half) * kl + torch.where(h, half * ce, 0.0)

    return _mean_over(chunked(per_position, student_logits, (*teacher, labels, share, hard)), counted)


def uld_loss(
    student_logits: torch.Tensor,
    teacher_ranked: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    teacher_aligned: torch.Tensor | None = None,
) -> torch.Tensor:
    """Universal logit distillation (Boizard et al., 2024, "Towards Cross-Tokenizer
    Distillation: the Universal Logit Distillation Loss for LLMs", arXiv 2402.12030): the
    Wasserstein-1 distance between the teacher's and the student's next-token distributions
    where their vocabularies differ, in closed form the L1 distance between the two
    probability vectors sorted in decreasing order (the smaller one padded with zeros). It
    asks nothing of the vocabularies, so a teacher of another family and tokenizer can teach.

    Shapes: student_logits (B, T, V); teacher_ranked (B, T, K), the teacher's K largest
    log-probabilities at `temperature`, sorted in decreasing order, at the teacher position
    aligned with each student position (`distill.tasks.text.align_to_teacher`); teacher_aligned
    (B, T), 1 where a teacher position is aligned (None: all); mask (B, T), 1 where a position
    counts. Ranks past K enter as one bucket (the difference of the masses outside the top K),
    which makes this a lower bound of the whole sorted L1 distance, equal to it when either
    tail holds no mass. Where ULD pairs the two sequences position by position up to the
    shorter one, we pair the positions whose next tokens start at the same character of the
    text. Not scaled by temperature**2 (the distance is bounded by 2 at any temperature).
    Returns the mean over counted, aligned positions, a scalar.
    """

    def per_position(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _sorted_l1(s, t, temperature)

    counted = mask.bool() if mask is not None else None
    if teacher_aligned is not None:
        counted = teacher_aligned.bool() if counted is None else counted & teacher_aligned.bool()
    return _mean_over(chunked(per_position, student_logits, (teacher_ranked,)), counted)


def next_token_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token predictions. student_logits (B, T, V), labels (B, T); mean."""
    return F.cross_entropy(student_logits.float().flatten(0, 1), labels.flatten())


def sequence_kd_loss(student_sequence_logits: torch.Tensor, sequence_labels: torch.Tensor) -> torch.Tensor:
    """Sequence-level KD (Kim and Rush, 2016, "Sequence-Level Knowledge Distillation"): the
    cross-entropy of the student, teacher-forced on the teacher's beam-search output for the
    same source, against that output. student_sequence_logits (B, T, V); sequence_labels
    (B, T), the teacher's tokens, -100 where it had ended. Mean over counted positions."""
    return next_token_ce(student_sequence_logits, sequence_labels)


def embedding_cosine_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """1 - cosine between student and teacher sentence embeddings, (B, D) each; mean."""
    return (1.0 - F.cosine_similarity(student_embedding.float(), teacher_embedding.float(), dim=-1)).mean()


def embedding_mse_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """Mean squared error between sentence embeddings, (B, D) each (Reimers and Gurevych,
    2020, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation")."""
    return F.mse_loss(student_embedding.float(), teacher_embedding.float())


def similarity_kd_loss(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, similarity_temperature: float = 0.05
) -> torch.Tensor:
    """KL(teacher || student) between each item's distributions over the batch's other items,
    softmax(cosine / `similarity_temperature`): the student learns which items the teacher
    puts nearest, not only where each embedding lies (relational KD, Park et al., 2019; in the
    listwise form of Tung and Mori's similarity-preserving KD, 2019). A low temperature weighs
    the nearest neighbours, what a search index returns. (B, D) each; mean over the B items;
    0 for a batch of one."""
    bsz = student_embedding.shape[0]
    if bsz < 2:
        return student_embedding.sum() * 0.0
    s = F.normalize(student_embedding.float(), dim=-1)
    t = F.normalize(teacher_embedding.float(), dim=-1)
    off = ~torch.eye(bsz, dtype=torch.bool, device=s.device)
    s_log = F.log_softmax((s @ s.T)[off].view(bsz, bsz - 1) / similarity_temperature, dim=-1)
    t_log = F.log_softmax((t @ t.T)[off].view(bsz, bsz - 1) / similarity_temperature, dim=-1)
    return (t_log.exp() * (t_log - s_log)).sum(-1).mean()


def _token_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The mask (B, T) of real tokens as fp32; every token of `like` (B, T, ...) when None."""
    return torch.ones(like.shape[:2], device=like.device) if mask is None else mask.float()


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE between one pair of hidden states over real tokens, (B, T, D) each; mask (B, T)
    (None: every token)."""
    m = _token_mask(mask, student).unsqueeze(-1)  # (B, T, 1)
    sq = (student.float() - teacher.float()).pow(2) * m
    return sq.sum() / (m.sum() * student.shape[-1]).clamp(min=1.0)


Pairs = list[tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]


def mapped_hidden_loss(hidden_pairs: Pairs) -> torch.Tensor:
    """Hidden-state MSE of mapped layers (Jiao et al., 2020, "TinyBERT"), mean over the pairs.

    hidden_pairs: (student state already projected to the teacher's width, teacher state, mask)
    per pair of the layer map (`distill.intermediate`), states (B, T, D) and mask (B, T) or None.
    """
    return torch.stack([hidden_state_loss(s, t, m) for s, t, m in hidden_pairs]).mean()


def hidden_cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """1 - cosine between one pair of hidden states, per real token, (B, T, D) each; mask (B, T)."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)  # (B, T)
    m = _token_mask(mask, student)
    return ((1.0 - cos) * m).sum() / m.sum().clamp(min=1.0)


def mapped_hidden_cosine_loss(hidden_pairs: Pairs) -> torch.Tensor:
    """The direction, not the scale, of mapped hidden states: 1 - cosine per real token, mean
    over the pairs. Pairs as `mapped_hidden_loss`."""
    return torch.stack([hidden_cosine_loss(s, t, m) for s, t, m in hidden_pairs]).mean()


def attention_map_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher || student) between the attention distributions of one pair of layers, per
    head and real query position: student (B, Hs, T, T), teacher (B, Ht, T, T) with Hs
    dividing Ht (the teacher's heads averaged in consecutive groups of Ht / Hs, a mixture of
    its distributions); mask (B, T). Keys the teacher gives no weight (padding, the future of a
    causal model) count nothing."""
    b, hs, t, _ = student.shape
    p = teacher.float().view(b, hs, -1, t, t).mean(2)  # (B, Hs, T, T)
    log_q = student.float().clamp(min=torch.finfo(torch.float32).tiny).log()
    kl = torch.where(p > 0, p * (p.clamp(min=torch.finfo(torch.float32).tiny).log() - log_q), 0.0).sum(-1)
    m = _token_mask(mask, student.transpose(1, 2))[:, None, :]  # (B, 1, T)
    return (kl * m).sum() / (m.sum() * hs).clamp(min=1.0)


def attention_kl_loss(attention_pairs: Pairs) -> torch.Tensor:
    """Attention-map distillation of mapped layers (TinyBERT's attention loss, as a KL in the
    manner of MiniLM, Wang et al., 2020): mean over the pairs of `attention_map_kl`.

    attention_pairs: (student map (B, Hs, T, T), teacher map (B, Ht, T, T), mask) per pair of
    mapped layers (`distill.intermediate`)."""
    return torch.stack([attention_map_kl(s, t, m) for s, t, m in attention_pairs]).mean()


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


def minilm_relation_loss(
    student_query: torch.Tensor,
    student_key: torch.Tensor,
    student_value: torch.Tensor,
    teacher_query: torch.Tensor,
    teacher_key: torch.Tensor,
    teacher_value: torch.Tensor,
    mask: torch.Tensor,
    relation_heads: int,
) -> torch.Tensor:
    """MiniLM's attention (Q-K) plus value (V-V) relation KL of the last layer (Wang et al.,
    2020). Shapes: student (B, T, Ds), teacher (B, T, Dt), mask (B, T)."""
    rel = relation_kd_loss(student_query, student_key, teacher_query, teacher_key, mask, relation_heads)
    return rel + relation_kd_loss(student_value, student_value, teacher_value, teacher_value, mask, relation_heads)


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """A registered loss term: its pure function, the teacher outputs it needs and how a model
    card describes it (a format string over the loss parameters)."""

    fn: Callable[..., torch.Tensor]
    needs: tuple[str, ...]
    text: str

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every parameter name of the function (bound by name for each micro-batch)."""
        return tuple(inspect.signature(self.fn).parameters)

    @property
    def required(self) -> frozenset[str]:
        """The parameters without a default: a task must provide them to allow the term."""
        params = inspect.signature(self.fn).parameters.values()
        return frozenset(p.name for p in params if p.default is inspect.Parameter.empty)

    def __call__(self, values: dict[str, object]) -> torch.Tensor:
        return self.fn(**{name: values[name] for name in self.inputs if name in values})


# The registry: a new loss is a pure function above and one line here. Terms are summed in
# this order.
LOSSES: dict[str, LossTerm] = {
    "ce": LossTerm(next_token_ce, (), "cross-entropy on the next token"),
    "forward_kl": LossTerm(
        topk_kd_loss, ("topk",), "KL(teacher || student) at temperature {temperature} over {support} (scaled by T²)"
    ),
    "reverse_kl": LossTerm(
        reverse_kl_loss,
        ("topk",),
        "KL(student || teacher), token by token (MiniLLM's reverse KL), at temperature {temperature} over {support}",
    ),
    "jsd": LossTerm(
        jsd_loss,
        ("topk",),
        "generalized Jensen-Shannon divergence (GKD) with beta {jsd_beta} at temperature {temperature} over {support}",
    ),
    "skew_kl": LossTerm(
        skew_kl_loss, ("topk",), "skew KL (DistiLLM) with alpha {skew_alpha} at temperature {temperature} over {support}"
    ),
    "skew_reverse_kl": LossTerm(
        skew_reverse_kl_loss,
        ("topk",),
        "skew reverse KL (DistiLLM) with alpha {skew_alpha} at temperature {temperature} over {support}",
    ),
    "tv": LossTerm(
        total_variation_loss, ("topk",), "total variation distance at temperature {temperature} over {support}"
    ),
    "self_evolution_kd": LossTerm(
        self_evolution_kd_loss,
        ("topk",),
        "self-evolution KD (forward KL at temperature {temperature} over {support}; on tokens harder than the "
        "batch's mean, a target blending in the reference by difficulty, at most {self_evolution_prior:g} of the prior)",
    ),
    "uld": LossTerm(
        uld_loss,
        ("ranked",),
        "universal logit distillation against the teachers of another tokenizer (the L1 distance of the sorted "
        "next-token probabilities, their top {top_k} at temperature {temperature}, at the positions where both "
        "tokenizers start a token)",
    ),
    "sequence_kd": LossTerm(
        sequence_kd_loss,
        ("sequences",),
        "cross-entropy on the teacher's own translations (beam search, {sequence_beams} beams; sequence-level KD)",
    ),
    "cosine": LossTerm(
        embedding_cosine_loss, ("sentence_embedding",), "(1 - cosine) between student and teacher embeddings"
    ),
    "mse": LossTerm(embedding_mse_loss, ("sentence_embedding",), "MSE between student and teacher sentence embeddings"),
    "similarity": LossTerm(
        similarity_kd_loss,
        ("sentence_embedding",),
        "KL between teacher and student distributions of each text over the batch's others, softmax of cosine at "
        "temperature {similarity_temperature}",
    ),
    "hidden": LossTerm(
        mapped_hidden_loss,
        ("hidden_states",),
        "MSE of the hidden states of the layers mapped by {layer_map} through a learned projection",
    ),
    "hidden_cosine": LossTerm(
        mapped_hidden_cosine_loss,
        ("hidden_states",),
        "1 - cosine of the hidden states of the layers mapped by {layer_map} through a learned projection",
    ),
    "attention": LossTerm(
        attention_kl_loss, ("attentions",), "KL between the attention maps of the layers mapped by {layer_map}"
    ),
    "relations": LossTerm(minilm_relation_loss, ("qkv",), "MiniLM attention and value relations of the last layer"),
}
