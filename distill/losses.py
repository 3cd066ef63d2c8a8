"""Distillation losses: one pure function each, computed in log space in fp32, and the registry.

A registered term is a pure function plus one line in `LOSSES` that says which teacher outputs
it needs (the teacher cache is built from the union of the needs of a study's terms). Its
parameters are named from one vocabulary, and each micro-batch binds them by name:

- student side: `student_logits` (B, T, V) next-token logits; `student_embedding` (B, D)
  sentence embeddings in the teacher's space; `student_hidden`, the student's hidden states
  (embedding output first), each (B, T, D) after its learned projection to the teacher's width;
  `student_query` / `student_key` / `student_value` (B, T, Ds), its last layer's projections;
- teacher side (the `needs` groups): "topk" gives `teacher_logprobs` and `teacher_indices`
  (B, T, K); "sequences" gives `teacher_sequence` and `teacher_sequence_mask` (B, L), the
  teacher's beam-search output for each source, which the task runs the student on
  (`student_sequence_logits`, `sequence_labels`); "sentence_embedding" gives `teacher_embedding` (B, D); "hidden_states" gives
  `teacher_hidden` (B, Lt + 1, T, D); "qkv" gives `teacher_query` / `teacher_key` /
  `teacher_value` (B, T, D);
- the batch and the study: `labels` (B, T) next tokens, `mask` (B, T) 1 for real tokens (None
  when every position counts), `layer_map` (the teacher state each student state is matched
  to), `relation_heads`, and the loss parameters of the spec's `[distill.loss]` (`temperature`).

A task allows every registered term whose inputs it can provide (see `distill.objective`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

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


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between one pair of hidden states over real tokens, (B, T, D) each; mask (B, T)."""
    m = mask.unsqueeze(-1).to(student.dtype)  # (B, T, 1)
    sq = (student.float() - teacher.float()).pow(2) * m
    return sq.sum() / (m.sum() * student.shape[-1]).clamp(min=1.0)


def mapped_hidden_loss(
    student_hidden: list[torch.Tensor], teacher_hidden: torch.Tensor, layer_map: list[int], mask: torch.Tensor
) -> torch.Tensor:
    """Hidden-state MSE of mapped layers (Jiao et al., 2020, "TinyBERT"): student state j
    against teacher state layer_map[j], the embedding output included, mean over the pairs.

    Shapes: student_hidden, Ls + 1 tensors (B, T, D) already projected to the teacher's width
    D; teacher_hidden (B, Lt + 1, T, D); layer_map, Ls + 1 indices into Lt + 1; mask (B, T).
    """
    pairs = [hidden_state_loss(h, teacher_hidden[:, layer_map[j]], mask) for j, h in enumerate(student_hidden)]
    return torch.stack(pairs).mean()


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
        topk_kd_loss,
        ("topk",),
        "KL(teacher || student) at temperature {temperature} over the teacher's top {top_k} tokens "
        "and one bucket for the rest (scaled by T²)",
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
    "hidden": LossTerm(
        mapped_hidden_loss,
        ("hidden_states",),
        "MSE of the hidden states of mapped layers (each student layer against the teacher layer it "
        "was taken from, the embedding output included) through a learned projection",
    ),
    "relations": LossTerm(minilm_relation_loss, ("qkv",), "MiniLM attention and value relations of the last layer"),
}
