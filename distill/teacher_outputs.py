"""Teacher outputs behind one interface: cached once per study, or live.

The loss asks a provider for the teacher's outputs on the items of a micro-batch; whether they
were computed once per study and read from disk (`CachedTeacher`) or come from the teacher run
on the batch in this process (`LiveTeacher`, for what a cache cannot hold: outputs the study
could not compute ahead, such as on sequences made during training, or the full
distributions and all hidden states of a large model) is the provider's business. Several
teachers are a list of providers with weights (`WeightedTeacher`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from distill.cache import PreparedData
    from distill.objective import LossConfig
    from distill.tasks.base import Batch, Task, Teacher


class TeacherOutputs(Protocol):
    def outputs(self, split: str, idx: np.ndarray, batch: Batch) -> dict[str, torch.Tensor]:
        """The teacher's outputs for the items `idx` of `split`, shaped like `batch`, named as
        the loss terms take them. Called once per micro-batch, under no gradient."""
        ...


class CachedTeacher:
    """Outputs computed once per study (`distill.cache.prepare`), read from the cache."""

    def __init__(self, data: PreparedData, groups: set[str], device: torch.device) -> None:
        self.data, self.device = data, device
        self.arrays = {
            split: {name: spec for name, spec in stored.items() if spec["group"] in groups}
            for split, stored in data.meta["outputs"].items()
        }

    def outputs(self, split: str, idx: np.ndarray, batch: Batch) -> dict[str, torch.Tensor]:
        out = {}
        for name, spec in self.arrays[split].items():
            rows = np.asarray(self.data.array(f"{split}_{name}")[idx])  # (B, *item shape)
            cut = {int(axis): batch.lengths[key] for axis, key in spec["cut"].items()}  # JSON keys are text
            index = tuple(slice(0, cut[axis]) if axis in cut else slice(None) for axis in range(len(spec["shape"])))
            out[name] = torch.from_numpy(rows[(slice(None), *index)]).to(self.device)
        return out


class LiveTeacher:
    """The teacher run on each batch in this process, with the loss parameters of the study
    (held-out splits take the task's held-out parameters, as the cache does)."""

    def __init__(self, task: Task, teacher: Teacher, groups: set[str], loss: LossConfig) -> None:
        self.task, self.teacher, self.groups, self.loss = task, teacher, groups, loss

    def outputs(self, split: str, idx: np.ndarray, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.task.teacher_outputs(self.teacher, batch, self.groups, split_params(self.task, self.loss, split))


ALIGNED_GROUPS = frozenset({"ranked"})
"""What a teacher of another tokenizer than the student's gives (`distill.cache.prepare`'s
`align_to`), and only such a teacher: next-token distributions without their tokens, at
aligned positions. The terms that need them (`uld`) count against such teachers alone, the
others against the teachers that share the student's tokenizer."""


def aligned_only(needs: tuple[str, ...] | set[str]) -> bool:
    """Whether a term that needs the groups `needs` learns from teachers of another tokenizer."""
    return bool(needs) and set(needs) <= ALIGNED_GROUPS


def groups_for(needs: set[str], aligned: bool) -> set[str]:
    """The groups of `needs` a teacher gives: of another tokenizer (`aligned`), the aligned
    ones; of the student's, every other."""
    return needs & ALIGNED_GROUPS if aligned else needs - ALIGNED_GROUPS


@dataclasses.dataclass(frozen=True)
class WeightedTeacher:
    provider: TeacherOutputs
    weight: float = 1.0
    aligned: bool = False
    """a teacher of another tokenizer than the student's: it gives `ALIGNED_GROUPS` alone, one
    of the student's every group but those (`groups_for`)"""

    def teaches(self, needs: tuple[str, ...]) -> bool:
        """Whether a term that needs the groups `needs` counts against this teacher."""
        return set(needs) <= groups_for(set(needs), self.aligned)


CONFIDENCE = {"lowest_entropy": "teacher_entropy", "lowest_loss": "teacher_nll"}
"""How `ChosenTeacher` ranks teachers at a position: the teacher output it takes the lowest of."""


class ChosenTeacher:
    """Several teachers sharing the student's tokenizer, one chosen per token: at each position
    the outputs of the teacher whose `CONFIDENCE[rule]` is the lowest there (the surest of
    its next token, or the one that predicts the reference best); ties go to the first."""

    def __init__(self, providers: list[TeacherOutputs], rule: str) -> None:
        self.providers, self.key = providers, CONFIDENCE[rule]

    def outputs(self, split: str, idx: np.ndarray, batch: Batch) -> dict[str, torch.Tensor]:
        each = [p.outputs(split, idx, batch) for p in self.providers]
        choice = torch.stack([o[self.key] for o in each]).argmin(0)  # (B, T): a teacher per token
        out = {}
        for name in each[0]:  # per-token outputs, (B, T, ...) each
            stacked = torch.stack([o[name] for o in each])  # (N, B, T, ...)
            pick = choice.view(1, *choice.shape, *[1] * (stacked.dim() - 3)).expand(1, *stacked.shape[1:])
            out[name] = stacked.gather(0, pick)[0]
        return out


def split_params(task: Task, loss: LossConfig, split: str) -> dict[str, Any]:
    """The parameters teacher outputs of `split` are made with."""
    return dict(loss.params) if split == "train" else {**loss.params, **task.held_out_params}


def on_policy_teacher(task: Task, data: PreparedData, loss: LossConfig, device: torch.device, share: float) -> WeightedTeacher | None:
    """The live teacher that scores the student's own outputs on `share` of the batches (None at 0)."""
    if share <= 0:
        return None
    teacher = _live_teacher(task, data, device)
    groups = loss.needs() & {"topk", "logits"}
    return WeightedTeacher(LiveTeacher(task, teacher, groups, loss))


def _live_teacher(task: Task, data: PreparedData, device: torch.device) -> Teacher:
    """The study's teacher loaded in this process, decoding as the study cached."""
    teacher = task.load_teacher(data.teacher_source)
    if (data.path / "teacher" / "generation_config.json").exists():  # how the study decodes with it
        teacher.model.generation_config = copy.deepcopy(data.teacher_generation_config())
    teacher.model.to(device)
    return teacher


def study_teachers(
    task: Task, data: PreparedData, loss: LossConfig, device: torch.device, others: tuple[PreparedData, ...] = ()
) -> list[WeightedTeacher]:
    """The teachers of a study as the loss sees them: each one's cache, or the teacher itself
    when the spec asks for live outputs (`[loss] teacher_outputs = "live"`). `data` is
    the first teacher's study, `others` those of the spec's other teachers, in order; they
    weigh `loss.teacher_weights` (normalized), or, with a per-token `loss.combine`, are one
    `ChosenTeacher`. A teacher of another tokenizer gives only `ALIGNED_GROUPS`."""
    if not loss.needs():
        return []  # no term asks the teacher anything
    providers: list[TeacherOutputs] = []
    for each in (data, *others):
        groups = groups_for(loss.needs(), each.aligned)
        if loss.teacher_outputs == "live":
            providers.append(LiveTeacher(task, _live_teacher(task, each, device), groups, loss))
        else:
            providers.append(CachedTeacher(each, groups, device))
    if loss.combine != "weights":
        return [WeightedTeacher(ChosenTeacher(providers, loss.combine))]
    weights = loss.weights_of_teachers(len(providers))
    return [WeightedTeacher(p, w, each.aligned) for p, w, each in zip(providers, weights, (data, *others))]
