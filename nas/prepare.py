"""Preparation, once per study and before anything trains: the data tokenized and the teachers'
outputs cached (`distill.prepare`) for the study's data, at every temperature its recipe may
choose, for each of its teachers and each extra evaluation set. The search and the full run
both start here, so that they read one cache."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from distill import LossConfig, PreparedData, prepare
from distill.cache import ensure_teacher
from distill.errors import InputError
from distill.precision import resolve
from distill.teacher_outputs import aligned_only
from nas.recipe import INTERMEDIATE
from nas.spec import StudySpec


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def study_precision(spec: StudySpec, device: torch.device | None = None) -> str:
    """What the spec's `[resources] precision` means on `device` (default: the device the
    spec's preparation runs on): "bf16" or "fp32"."""
    return resolve(spec.resources.precision, device or pick_device(spec.resources.gpus))


def prepare_study(spec: StudySpec, temperature: float | None = None) -> PreparedData:
    """Tokenize the data and cache the teacher's outputs, once per study (on a GPU where the
    spec asks for one and there is one); the search space is checked against the teacher
    before any teacher output is computed. With a searchable recipe, the outputs every recipe
    may need, at `temperature` (one of the recipe's; default: the loss's)."""
    return _prepare(spec, spec.data, temperature=temperature, check=lambda config: spec.task.check_space(spec.space, config))


def cache_loss(spec: StudySpec, temperature: float | None = None) -> LossConfig:
    """The loss the teacher's outputs are cached for: the spec's, plus every term its recipe
    may choose, at `temperature`."""
    weights, params = dict(spec.loss.weights), dict(spec.loss.params)
    weights |= dict.fromkeys(spec.recipe.loss, 1.0)
    if any(spec.recipe.intermediate):
        weights[INTERMEDIATE] = 1.0
    if temperature is not None:
        params["temperature"] = temperature
    return dataclasses.replace(spec.loss, weights=weights, params=params)


def _prepare(
    spec: StudySpec, data: Any, teacher: Any = None, temperature: float | None = None, loss: LossConfig | None = None, **kwargs: Any
) -> PreparedData:
    return prepare(
        spec.task,
        teacher or spec.teacher,
        data,
        loss or cache_loss(spec, temperature),
        base_dir=spec.base_dir,
        cache_root=spec.out_dir / "cache",
        seed=spec.study.seed,
        device=str(pick_device(spec.resources.gpus)),
        precision=study_precision(spec),
        **kwargs,
    )


def prepare_other_teachers(
    spec: StudySpec, data: PreparedData, temperature: float | None = None
) -> tuple[PreparedData, ...]:
    """The spec's other teachers (`[[teacher]]` after the first) on the study's data, cached
    like the first. One with the first teacher's tokenizer must cut the data into the same
    items with the same tokens (the student's tokenizer is the first teacher's) and give
    outputs of the same shapes; one with another tokenizer (another family) runs on its own
    tokens of the same text, aligned with the student's, and teaches through the terms that
    need no shared vocabulary (`uld`)."""
    out = []
    for i, teacher in enumerate(spec.other_teachers, start=1):
        key = f"teacher[{i}]"
        try:
            source = ensure_teacher(spec.task, teacher, spec.data, base_dir=spec.base_dir, seed=spec.study.seed)
            if _same_vocabulary(data, source):
                other = _prepare(spec, spec.data, teacher, temperature)  # students are built from the first
            else:
                loss = _aligned_loss(spec, source.name, temperature)
                other = _prepare(spec, spec.data, teacher, temperature, loss, align_to=data)
        except InputError as e:
            text = str(e)
            raise InputError(f"{key}.{text[8:]}" if text.startswith("teacher.") else f"{key} ({teacher.model or teacher.package}): {text}") from None
        if not other.aligned:
            check_same_items(data, other, key)
        out.append(other)
    aligned_terms = [n for n, term, _ in spec.loss.active() if aligned_only(term.needs)]
    if aligned_terms and not any(o.aligned for o in out):
        raise InputError(
            f"loss.{aligned_terms[0]}: teaches from teachers whose tokenizer is not the student's, and every teacher "
            "of the spec shares it; use the terms over the shared vocabulary (forward_kl, ...) or add such a [[teacher]]"
        )
    return tuple(out)


def _same_vocabulary(first: PreparedData, source: Any) -> bool:
    """Whether the teacher at `source` has the first teacher's vocabulary (token for token)."""
    return first.teacher_tokenizer().get_vocab() == source.tokenizer().get_vocab()


def _aligned_loss(spec: StudySpec, name: str, temperature: float | None) -> LossConfig:
    """The loss a teacher of another tokenizer is cached for: the terms that need no shared
    vocabulary (`uld`), or one error (on `teacher.model`, which the caller names) where the
    spec has none or combines teachers in a way that needs one."""
    loss = cache_loss(spec, temperature)
    if loss.combine != "weights" or loss.teacher_outputs != "cached":
        setting = f'combine = "{loss.combine}"' if loss.combine != "weights" else 'teacher_outputs = "live"'
        raise InputError(
            f"teacher.model: {name!r} has another tokenizer than the first teacher; its outputs are cached on the "
            f"student's tokens, so [loss] {setting} cannot take it (use the defaults: combine = \"weights\", cached outputs)"
        )
    terms = {n: w for n, term, w in loss.active() if aligned_only(term.needs)}
    if not terms:
        raise InputError(
            f"teacher.model: {name!r} has another tokenizer than the first teacher (the student's); it can teach only "
            "through terms that need no shared vocabulary: add [loss] uld = 1.0 (universal logit distillation)"
        )
    return dataclasses.replace(loss, weights=terms)


def check_same_items(first: PreparedData, other: PreparedData, key: str) -> None:
    """Raise `InputError` naming `key` unless `other` holds the first teacher's training items
    token for token and outputs of the same shapes."""
    for name in first.items("train"):
        if not (other.path / f"train_{name}.npy").exists() or not np.array_equal(first.array(f"train_{name}"), other.array(f"train_{name}")):
            raise InputError(
                f"{key}.model: {other.meta['teacher_name']!r} has the first teacher's vocabulary "
                f"({first.meta['teacher_name']!r}) but cuts the data into other tokens; a teacher of the student's "
                "vocabulary must tokenize as the first does"
            )
    for split, arrays in first.meta["outputs"].items():
        theirs = other.meta["outputs"].get(split, {})
        for name, spec in arrays.items():
            if name in theirs and theirs[name]["shape"] != spec["shape"]:
                raise InputError(
                    f"{key}.model: its {name} has shape {theirs[name]['shape']}, the first teacher's {spec['shape']}; "
                    "several teachers must give outputs of one shape"
                )


def prepare_eval_sets(spec: StudySpec) -> dict[str, PreparedData]:
    """Each `[[eval]]` set tokenized with the teacher's outputs on it, cached like the study's
    data (after `prepare_study`: the teacher exists by then). A data error names the set's table."""
    out = {}
    for i, s in enumerate(spec.evals):
        try:
            out[s.name] = _prepare(spec, s.data, held_out_only=True)
        except InputError as e:
            text = str(e)
            raise InputError(f"eval[{i}].{text[5:]}" if text.startswith("data.") else f"eval[{i}] ({s.name}): {text}") from None
    return out


def eval_set_teacher_metrics(evals: dict[str, PreparedData]) -> dict[str, dict[str, float]]:
    return {name: data.teacher_metrics for name, data in evals.items()}


def eval_set_info(evals: dict[str, PreparedData]) -> dict[str, dict[str, Any]]:
    """What reading each extra evaluation set's data found."""
    return {name: data.data_info for name, data in evals.items()}
