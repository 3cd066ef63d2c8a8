"""Full distillation of an architecture picked from the front, exported as a Hugging Face
model folder with a model card; the study remembers what was distilled."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from distill import DistillConfig, PreparedData, distill, evaluate_lm, size_metrics
from distill.errors import InputError
from nas.model_card import model_card
from nas.search import DISTILLED, distinct_complete, front_trials, load_existing_study, prepare_study
from nas.spec import QUALITY_METRICS, StudySpec
from nas.trial import pick_device
from search_spaces import DecoderArch, build_model

logger = logging.getLogger(__name__)


def select_trial(
    study: optuna.Study, *, number: int | None = None, best: str | None = None, max_params: float | None = None
) -> optuna.trial.FrozenTrial:
    """The trial `number`, or the front trial best at quality metric `best` within `max_params`."""
    if not distinct_complete(study):
        raise InputError(f"study {study.study_name!r} has no complete trial; run `nas search` first")
    if number is not None:
        if not 0 <= number < len(study.trials):
            raise InputError(f"--trial: no trial {number} in study {study.study_name!r} (0-{len(study.trials) - 1})")
        trial = study.trials[number]
        if trial.state != optuna.trial.TrialState.COMPLETE:
            reason = trial.user_attrs.get("fail_reason", "")
            raise InputError(f"--trial: trial {number} is {trial.state.name}, not COMPLETE {reason}".rstrip())
        twin = trial.user_attrs.get("duplicate_of")
        return study.trials[twin] if twin is not None else trial
    if best not in QUALITY_METRICS:
        raise InputError(f"--best: unknown metric {best!r}; allowed: {', '.join(QUALITY_METRICS)}")
    candidates = [
        t
        for t in front_trials(study)
        if best in t.user_attrs and (max_params is None or t.user_attrs["params"] <= max_params)
    ]
    if not candidates:
        limit = f" with at most {max_params:,.0f} parameters" if max_params is not None else ""
        raise InputError(f"--best: no front trial{limit} has a {best}; relax --max-params")
    sign = 1 if QUALITY_METRICS[best] == "min" else -1
    return min(candidates, key=lambda t: sign * t.user_attrs[best])


def export_dir(spec: StudySpec, number: int) -> Path:
    return spec.out_dir / "students" / str(number)


def checkpoint_dir(spec: StudySpec, number: int) -> Path:
    return spec.out_dir / "checkpoints" / str(number)


def full_distill(
    spec: StudySpec,
    trial: optuna.trial.FrozenTrial,
    study: optuna.Study,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str = "",
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Distill `trial`'s architecture with the `[full]` budget, export it, record it."""
    out = export_dir(spec, trial.number)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} already holds a model; pass --overwrite to replace it")
    ckpt = checkpoint_dir(spec, trial.number)
    if not resume:
        shutil.rmtree(ckpt, ignore_errors=True)
    elif not (ckpt / "last.pt").exists():
        logger.warning("no checkpoint in %s: starting from the beginning", ckpt)
    data = prepare_study(spec, "cuda" if spec.resources.gpus > 0 else "cpu")
    device = pick_device(spec.resources.gpus or float(torch.cuda.is_available()))
    arch = DecoderArch.from_dict(trial.user_attrs["arch"])
    cfg = spec.full.apply(spec.distill)
    metric, direction = spec.objectives.metrics[0]
    sign = 1.0 if direction == "min" else -1.0
    valid_blocks, valid_targets = data.blocks("valid"), data.targets("valid")

    def validate(model: torch.nn.Module) -> float:
        return sign * evaluate_lm(model, valid_blocks, valid_targets, device=device)[metric]

    torch.manual_seed(spec.study.seed)
    student = build_model(arch, data.teacher_config(), data.meta["block_length"])
    logger.info(
        "full distillation of trial %d (%s): %d steps",
        trial.number,
        arch.short(),
        cfg.total_steps(data.meta["block_length"]),
    )
    start = time.perf_counter()
    result = distill(
        student,
        data.blocks("train"),
        cfg,
        targets=data.targets("train"),
        seed=spec.study.seed,
        device=device,
        on_step=on_step,
        validate=validate,
        checkpoint_dir=ckpt,
        resume=resume,
    )
    seconds = time.perf_counter() - start
    metrics = evaluate_lm(student, data.blocks("eval"), data.targets("eval"), device=device)
    metrics |= size_metrics(student, data.meta["block_length"], device=device)
    record = {
        "export": str(out),
        "metrics": metrics,
        "brief": {k: trial.user_attrs[k] for k in QUALITY_METRICS if k in trial.user_attrs},
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "evals": result.evals,
        "train_seconds_last_run": seconds,
        "device": str(device),
        "command": command,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _export(student, data, spec, trial, arch, cfg, record, out)
    shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: its checkpoints are spent
    distilled = dict(study.user_attrs.get(DISTILLED, {}))
    distilled[str(trial.number)] = record
    study.set_user_attr(DISTILLED, distilled)
    return record


def _export(
    student: Any,
    data: PreparedData,
    spec: StudySpec,
    trial: optuna.trial.FrozenTrial,
    arch: DecoderArch,
    cfg: DistillConfig,
    record: dict[str, Any],
    out: Path,
) -> None:
    """save_pretrained (safetensors) + tokenizer + generation config + model card, swapped in whole."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(data.path / "teacher")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    student.cpu().save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config = student.config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=pad,
        max_new_tokens=64,
        do_sample=True,
        top_p=0.95,
        temperature=0.8,
    ).save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(spec, data.meta, trial.number, arch, cfg, record))
    (tmp / "distill_nas.json").write_text(json.dumps({"arch": arch.to_dict(), **record}, indent=2, default=_plain))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


__all__ = ["DISTILLED", "full_distill", "load_existing_study", "select_trial"]
