"""Intermediate layers: which student states meet which teacher states, and the learned
projections between their widths.

A task whose students have stacks of layers (a decoder; an encoder and a decoder) says what
each stack is (`Task.stacks`), gives the student's hidden states and attention maps per stack
from `forward` (`student_states`, `student_attentions`, `state_masks`) and the teacher's as the
outputs `teacher_<stack>_hidden` (B, Lt + 1, T, D) and `teacher_<stack>_attentions`
(B, Lt, Ht, T, T). `Intermediate` pairs them by the layer map of `[loss]` and projects
student states to the teacher's width; the loss terms (`distill.losses`) see only the pairs.

The projections are training state: a submodule of the student while it trains (so that the
optimizer, checkpoints, resuming and the best weights carry them), dropped at the end of the
run (`distill.loop`), never exported or counted in the student's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import torch

from distill.errors import InputError
from distill.loop import TRAINING_STATE
from distill.precision import autocast
from search_spaces import layer_map as init_layer_map

LAYER_MAPS = ("init", "uniform", "last-K")
"""The named layer maps; besides them, an explicit list (one teacher state per student state)."""



@dataclasses.dataclass(frozen=True)
class Stack:
    """One stack of layers of a student and of its teacher (a decoder, an encoder)."""

    student_layers: int
    teacher_layers: int
    student_width: int
    teacher_width: int
    student_heads: int
    teacher_heads: int
    pick: str = "even"
    """how the student's layers were taken from the teacher's (`search_spaces.pick_layers`);
    "even" for a student that took none"""


def check_layer_map(rule: Any) -> None:
    """Raise ValueError("layer_map: ...") unless `rule` is a named map or a list of states."""
    if isinstance(rule, (list, tuple)):
        if not rule or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in rule):
            raise ValueError(f"layer_map: a list must hold teacher states (integers >= 0), got {list(rule)}")
        return
    if rule in ("init", "uniform") or re.fullmatch(r"last-[1-9][0-9]*", str(rule)):
        return
    raise ValueError(f"layer_map: must be one of {', '.join(LAYER_MAPS)} or a list of teacher states, got {rule!r}")


def layer_pairs(rule: Any, stack: Stack) -> list[tuple[int, int]]:
    """(student state, teacher state) pairs of one stack; state 0 is the embedding output and
    state j the output of layer j.

    - "init": each student layer against the teacher layer it was taken from (for a student
      that took none, layers spread evenly, the last against the last), embeddings against
      embeddings;
    - "uniform": student layer j against teacher layer j Lt / Ls rounded half up (TinyBERT's
      uniform strategy, Jiao et al., 2020), embeddings against embeddings;
    - "last-K": the student's last K layers against the teacher's last K (K at most either depth);
    - a list: teacher state `rule[j]` for student state j, Ls + 1 entries.
    """
    s, t = stack.student_layers, stack.teacher_layers
    if isinstance(rule, (list, tuple)):
        if len(rule) != s + 1 or max(rule) > t:
            raise InputError(
                f"loss.layer_map: {list(rule)} does not fit a {s}-layer student of a {t}-layer teacher; "
                f"give {s + 1} teacher states (0 to {t}), embedding output first"
            )
        return list(enumerate(rule))
    if rule == "init":
        return list(enumerate(init_layer_map(s, t, stack.pick)))
    if rule == "uniform":
        return [(0, 0)] + [(j, (2 * j * t + s) // (2 * s)) for j in range(1, s + 1)]
    k = min(int(rule.split("-")[1]), s, t)
    return [(s - k + i, t - k + i) for i in range(1, k + 1)]


class Intermediate(torch.nn.Module):
    """The layer pairs of every stack and one learned projection per stack from the student's
    width to the teacher's (TinyBERT's W_h; none where the widths agree)."""

    def __init__(self, stacks: dict[str, Stack], rule: Any, attention: bool) -> None:
        super().__init__()
        self.pairs = {name: layer_pairs(rule, stack) for name, stack in stacks.items()}
        if attention:
            for name, stack in stacks.items():
                if stack.teacher_heads % stack.student_heads:
                    raise InputError(
                        f"loss.attention: a student {name} of {stack.student_heads} heads cannot be matched "
                        f"with the teacher's {stack.teacher_heads} (its heads must divide the teacher's); "
                        "use space.heads that do"
                    )
        with torch.random.fork_rng(devices=[]):  # the same initial projections whatever ran before
            torch.manual_seed(0)
            self.projections = torch.nn.ModuleDict(
                {
                    name: torch.nn.Linear(stack.student_width, stack.teacher_width, bias=False)
                    for name, stack in stacks.items()
                    if stack.student_width != stack.teacher_width
                }
            )

    def hidden_pairs(self, values: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(student state projected to the teacher's width, teacher state, mask) per mapped pair."""
        out = []
        for name, pairs in self.pairs.items():
            states, teacher = values["student_states"][name], values[f"teacher_{name}_hidden"]
            project = self.projections[name] if name in self.projections else (lambda h: h)
            out += [(project(states[j]), teacher[:, i], values["state_masks"][name]) for j, i in pairs]
        return out

    def attention_pairs(self, values: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(student attention map (B, Hs, T, T), teacher map (B, Ht, T, T), mask) per mapped pair
        of layers (embedding outputs have none)."""
        out = []
        for name, pairs in self.pairs.items():
            maps, teacher = values["student_attentions"][name], values[f"teacher_{name}_attentions"]
            out += [(maps[j - 1], teacher[:, i - 1], values["state_masks"][name]) for j, i in pairs if i and j]
        return out

    def add_pairs(self, values: dict[str, Any], wanted: set[str]) -> dict[str, Any]:
        """`values` with the pairs the loss terms want."""
        if "hidden_pairs" in wanted:
            values["hidden_pairs"] = self.hidden_pairs(values)
        if "attention_pairs" in wanted:
            values["attention_pairs"] = self.attention_pairs(values)
        return values


STUDENT_SIDE = {
    "hidden_pairs": {"student_states", "state_masks"},
    "attention_pairs": {"student_attentions", "state_masks"},
}
"""What the task's `forward` gives for each kind of pairs."""


def paired_values(task_values: set[str] | frozenset[str]) -> set[str]:
    """The pairs a task's students can give (it gives their student side and has `stacks`)."""
    return {pairs for pairs, side in STUDENT_SIDE.items() if side <= task_values}


def attach(task: Any, student: torch.nn.Module, arch: dict[str, Any] | None, data: Any, rule: Any, wanted: set[str]) -> Intermediate | None:
    """The student's `Intermediate` when a loss term wants pairs (None otherwise), attached to
    it as training state."""
    if not wanted & set(STUDENT_SIDE):
        return None
    if arch is None:
        raise ValueError("intermediate-layer terms need the student's architecture")
    inter = Intermediate(task.stacks(arch, data), rule, "attention_pairs" in wanted)
    inter.to(next(student.parameters()).device)
    setattr(student, TRAINING_STATE, inter)
    return inter


def student_side(wanted: set[str]) -> set[str]:
    """`wanted` with the values the task's forward gives for the pairs in it."""
    return set(wanted).union(*(side for pairs, side in STUDENT_SIDE.items() if pairs in wanted))


@contextlib.contextmanager
def attention_maps(model: Any, wanted: bool = True) -> Iterator[None]:
    """Run `model` with eager attention, the one that returns its attention maps, for the
    forward passes inside (the backward pass needs nothing of it); as it was afterwards."""
    before = model.config._attn_implementation
    switch = wanted and before != "eager"
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


def run_with_layers(model: Any, layers: set[str], **inputs: torch.Tensor) -> Any:
    """`model(**inputs)` (under the device's autocast) with the hidden states and attention
    maps that the intermediate-layer groups `layers` ask for."""
    device = next(iter(inputs.values())).device
    with autocast(device), attention_maps(model, "attentions" in layers):
        return model(
            **inputs, output_hidden_states="hidden_states" in layers, output_attentions="attentions" in layers
        )


__all__ = [
    "Intermediate",
    "LAYER_MAPS",
    "Stack",
    "attach",
    "attention_maps",
    "check_layer_map",
    "layer_pairs",
    "paired_values",
    "run_with_layers",
    "student_side",
]
