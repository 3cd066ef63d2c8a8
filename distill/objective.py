"""The loss of a study (`[loss]`): a weight per registered term and the parameters the
terms and teacher outputs take, turned into the loss function of a micro-batch."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.intermediate import attach, paired_values, student_side
from distill.losses import LOSSES, LossTerm
from distill.teacher_outputs import aligned_only

if TYPE_CHECKING:
    from distill.cache import PreparedData
    from distill.tasks.base import Task
    from distill.teacher_outputs import WeightedTeacher

TEACHER_OUTPUTS = ("cached", "live")
COMBINE = ("weights", "lowest_entropy", "lowest_loss")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The loss of both runs of a study (brief and full): the `[loss]` section."""

    weights: dict[str, float]
    """weight of each registered term (`distill.losses.LOSSES`); 0 turns a term off"""
    params: dict[str, Any]
    """the task's loss parameters (e.g. temperature, top_k)"""
    teacher_outputs: str = "cached"
    """where the teacher's outputs on training batches come from: cached (computed once per
    study) or live (the teacher runs on every batch, in the trial's process)"""
    teacher_weights: tuple[float, ...] = ()
    """several teachers (the spec's `[[teacher]]` tables, in order): the weight of each; empty
    for one teacher"""
    combine: str = "weights"
    """how several teachers' targets combine: "weights" (every term against each teacher, by
    its weight), or per token the teacher with the "lowest_entropy" or the "lowest_loss" on
    the reference"""

    def __post_init__(self) -> None:
        unknown = [n for n in self.weights if n not in LOSSES]
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown loss term; allowed: {', '.join(LOSSES)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights: must be >= 0")
        if not self.active():
            raise ValueError(f"weights: at least one term needs a weight > 0 ({', '.join(self.weights)})")
        if self.teacher_outputs not in TEACHER_OUTPUTS:
            raise ValueError(f"teacher_outputs: must be one of {', '.join(TEACHER_OUTPUTS)}, got {self.teacher_outputs!r}")
        if self.params.get("full_vocabulary") and self.teacher_outputs != "live":
            raise ValueError('full_vocabulary: full teacher logits are too large to cache; set teacher_outputs = "live"')
        if any(w < 0 for w in self.teacher_weights) or (self.teacher_weights and not sum(self.teacher_weights) > 0):
            raise ValueError(f"teacher_weights: must be >= 0 with a positive sum, got {list(self.teacher_weights)}")
        if self.combine not in COMBINE:
            raise ValueError(f"combine: must be one of {', '.join(COMBINE)}, got {self.combine!r}")
        if self.combine != "weights":
            if len(self.teacher_weights) < 2:
                raise ValueError(f"combine: {self.combine} chooses among several teachers; the spec lists one")
            other = sorted({n for n, term, _ in self.active() if set(term.needs) - {"topk"}})
            if other:
                raise ValueError(
                    f"combine: {self.combine} chooses a next-token distribution per token; "
                    f'{", ".join(other)} need combine = "weights"'
                )

    def active(self) -> list[tuple[str, LossTerm, float]]:
        """(name, term, weight) of the terms that count, in the registry's order."""
        return [(n, t, self.weights[n]) for n, t in LOSSES.items() if self.weights.get(n, 0.0) > 0]

    def needs(self) -> set[str]:
        """The teacher output groups the active terms need: a live teacher's full logits in
        place of its top k with `full_vocabulary`."""
        groups = {group for _, term, _ in self.active() for group in term.needs}
        if self.params.get("full_vocabulary") and "topk" in groups:
            groups = (groups - {"topk"}) | {"logits"}
        if self.combine != "weights":  # each teacher's confidence per token
            groups.add("confidence")
        return groups

    def weights_of_teachers(self, n: int) -> list[float]:
        """The weight of each of `n` teachers, summing to 1 (equal without `teacher_weights`)."""
        weights = list(self.teacher_weights) or [1.0] * n
        if len(weights) != n:
            raise ValueError(f"teacher_weights: {len(weights)} weights for {n} teachers")
        return [w / sum(weights) for w in weights]

    def describe(self) -> str:
        """The loss in words, for model cards: `1.0 x <term> + 0.5 x <term>`."""
        if self.params.get("full_vocabulary"):
            where = "the whole vocabulary (a live teacher's logits)"
        else:
            where = "the teacher's top {top_k} tokens and one bucket for the rest".format(top_k=self.params.get("top_k"))
        words = {**self.params, "support": where, "layer_map": layer_map_words(self.params.get("layer_map"))}
        text = " + ".join(f"{w:g} x {term.text.format(**words)}" for _, term, w in self.active())
        if len(self.teacher_weights) > 1 and self.combine == "weights":
            shares = " / ".join(f"{w:.3g}" for w in self.weights_of_teachers(len(self.teacher_weights)))
            text += f"; the terms that need a teacher against each of {len(self.teacher_weights)} teachers, weighted {shares}"
            if any(aligned_only(term.needs) for _, term, _ in self.active()):
                text += " (uld against those of another tokenizer, the others against those of the student's)"
        elif self.combine != "weights":
            how = {"lowest_entropy": "the lowest entropy", "lowest_loss": "the lowest loss on the reference"}[self.combine]
            text += f"; at each token, the targets of the one of {len(self.teacher_weights)} teachers with {how}"
        return text


def layer_map_words(rule: Any) -> str:
    """A layer map (`distill.intermediate.layer_pairs`) in words, for model cards."""
    if isinstance(rule, (list, tuple)):
        return f"the list {list(rule)} (the teacher state of each student state)"
    if isinstance(rule, str) and rule.startswith("last-"):
        return f"{rule} (the student's last {rule[5:]} layers against the teacher's last)"
    return {
        "init": "init (each student layer against the teacher layer it was taken from, or spread evenly)",
        "uniform": "uniform (student layer j against teacher layer j x Lt / Ls)",
    }.get(rule, str(rule))


def allowed_terms(task: Task) -> list[str]:
    """The registered terms a task can compute: it gives every input they require."""
    given = set(task.values) | {f.name for f in dataclasses.fields(task.loss_params)}
    given |= paired_values(task.values)
    given |= {value for group in task.outputs.values() for value in group}
    return [n for n, t in LOSSES.items() if set(t.needs) <= set(task.outputs) and t.required <= given]


def on_policy_terms(loss: LossConfig) -> list[tuple[str, LossTerm, float]]:
    """The active terms that count on the student's own samples: divergences that read no
    reference (the labels of a sampled batch are the student's own tokens)."""
    return [(n, t, w) for n, t, w in loss.active() if set(t.needs) <= {"topk"} and t.needs and "labels" not in t.inputs]


def on_policy_step(idx: np.ndarray, share: float) -> bool:
    """Whether the batch of items `idx` is one on the student's own outputs: a fixed draw per
    batch (a resumed run decides as the killed one did), true for `share` of the batches."""
    return share > 0 and zlib.crc32(np.ascontiguousarray(idx, dtype=np.int64).tobytes()) / 2**32 < share


def make_loss(
    task: Task,
    student: torch.nn.Module,
    data: PreparedData,
    loss: LossConfig,
    teachers: list[WeightedTeacher],
    device: torch.device,
    on_policy: float = 0.0,
    live: WeightedTeacher | None = None,
    arch: dict[str, Any] | None = None,
) -> Callable[..., torch.Tensor]:
    """The loss of the training items at `idx`: the weighted sum of the active terms, terms
    that need a teacher summed once per teacher and weighted by that teacher's weight.

    On `on_policy` of the batches (GKD's lambda) the student first samples its own outputs
    from the batch's inputs (`task.on_policy_batch`), and the `live` teacher scores them: the
    divergence terms alone count there (the references say nothing of the student's samples).

    Terms on intermediate layers pair the student's states with the teacher's through an
    `Intermediate` (`distill.intermediate`) attached to `student` for the run, built from its
    architecture `arch`."""
    terms = loss.active()
    free = [(term, w) for _, term, w in terms if not term.needs]
    taught = [(term, w) for _, term, w in terms if term.needs]
    wanted = {name for _, term, _ in terms for name in term.inputs}
    inter = attach(task, student, arch, data, loss.params.get("layer_map"), wanted)
    wanted = student_side(wanted)
    divergences = [(term, w) for _, term, w in on_policy_terms(loss)]
    on_policy_wanted = {name for term, _ in divergences for name in term.inputs}

    def values_of(batch: Any, outputs: dict[str, torch.Tensor], aligned: bool = False) -> dict[str, Any]:
        values = {**loss.params, **task.forward(student, batch, wanted, outputs), **outputs}
        # a teacher of another tokenizer gives no layers to pair
        return inter.add_pairs(values, wanted) if inter is not None and not aligned else values

    def loss_fn(idx: np.ndarray, whole: np.ndarray | None = None) -> torch.Tensor:
        """`whole`: the micro-batch `idx` is a worker's share of (`distill.loop.Workers`),
        whose draw decides on-policy batches alike on every worker."""
        batch = task.batch(data, "train", idx, device)
        if live is not None and on_policy_step(idx if whole is None else whole, on_policy):
            sampled = task.on_policy_batch(student, batch)
            outputs = live.provider.outputs("train", idx, sampled)
            values = {**loss.params, **task.forward(student, sampled, on_policy_wanted, outputs), **outputs}
            return sum(w * term(values) for term, w in divergences)
        total: Any = 0
        for i, teacher in enumerate(teachers if taught else [None]):
            outputs = teacher.provider.outputs("train", idx, batch) if teacher is not None else {}
            values = values_of(batch, outputs, teacher is not None and teacher.aligned)
            if i == 0:  # terms without a teacher count once
                total = sum(w * term(values) for term, w in free)
            if teacher is not None:
                mine = [(t, w) for t, w in taught if teacher.teaches(t.needs)]
                total = total + teacher.weight * sum(w * term(values) for term, w in mine)
        return total

    return loss_fn
