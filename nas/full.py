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
from distill.embedding import embedding_loss_fn, evaluate_embeddings
from distill.errors import InputError
from nas.model_card import model_card
from nas.search import DISTILLED, distinct_complete, front_trials, prepare_study
from nas.spec import QUALITY_METRICS, TASK_METRICS, StudySpec
from nas.trial import build_embedding_student, embedding_size, init_decoder_student, layer_map, pick_device
from search_spaces import DecoderArch, EncoderArch, build_model

logger = logging.getLogger(__name__)


def select_trial(
    study: optuna.Study,
    *,
    number: int | None = None,
    best: str | None = None,
    max_params: float | None = None,
    metrics: dict[str, str] = QUALITY_METRICS,
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
    if best not in metrics:
        raise InputError(f"--best: unknown metric {best!r}; allowed: {', '.join(metrics)}")
    candidates = [
        t
        for t in front_trials(study)
        if best in t.user_attrs and (max_params is None or t.user_attrs["params"] <= max_params)
    ]
    if not candidates:
        limit = f" with at most {max_params:,.0f} parameters" if max_params is not None else ""
        raise InputError(f"--best: no front trial{limit} has a {best}; relax --max-params")
    sign = 1 if metrics[best] == "min" else -1
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
    cfg = spec.full.apply(spec.distill)
    length = data.meta["block_length"]
    metric, direction = spec.objectives.metrics[0]
    sign = 1.0 if direction == "min" else -1.0
    torch.manual_seed(spec.study.seed)
    if spec.study.task == "embedding":
        arch: Any = EncoderArch.from_dict(trial.user_attrs["arch"])
        student: Any = build_embedding_student(arch, data).to(device)
        items = data.array("train_ids")
        targets = {
            n: data.array(f"train_{n}")
            for n in ("emb", "hidden", "query", "key", "value")
            if (data.path / f"train_{n}.npy").exists()
        }
        heads = math.gcd(data.meta["teacher_heads"], arch.hidden)
        loop: dict[str, Any] = {
            "loss_fn": embedding_loss_fn(
                student,
                items,
                data.array("train_mask"),
                targets,
                cfg,
                device,
                heads,
                layer_map(arch, data.meta["teacher_layers"]),
            )
        }

        def quality(split: str) -> dict[str, float]:
            return evaluate_embeddings(
                student, data.array(f"{split}_ids"), data.array(f"{split}_mask"), data.array(f"{split}_emb"), device
            )

        def size() -> dict[str, float]:
            return embedding_size(student, length, device)
    else:
        arch = DecoderArch.from_dict(trial.user_attrs["arch"])
        student = build_model(arch, data.teacher_config(), length)
        if arch.init == "teacher":
            init_decoder_student(student, arch, data)
        items, loop = data.blocks("train"), {"targets": data.targets("train")}

        def quality(split: str) -> dict[str, float]:
            return evaluate_lm(student, data.blocks(split), data.targets(split), device=device)

        def size() -> dict[str, float]:
            return size_metrics(student, length, device=device)

    def validate(model: torch.nn.Module) -> float:
        return sign * quality("valid")[metric]

    logger.info("full distillation of trial %d (%s): %d steps", trial.number, arch.short(), cfg.total_steps(length))
    start = time.perf_counter()
    result = distill(
        student,
        items,
        cfg,
        seed=spec.study.seed,
        device=device,
        on_step=on_step,
        validate=validate,
        checkpoint_dir=ckpt,
        resume=resume,
        **loop,
    )
    seconds = time.perf_counter() - start
    metrics = quality("eval") | size()
    record = {
        "export": str(out),
        "metrics": metrics,
        "brief": {k: trial.user_attrs[k] for k in TASK_METRICS[spec.study.task][0] if k in trial.user_attrs},
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
    arch: Any,
    cfg: DistillConfig,
    record: dict[str, Any],
    out: Path,
) -> None:
    """The task's model folder plus the model card and `distill_nas.json`, written beside `out`
    and swapped in whole, so that a failure never leaves half an export."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if spec.study.task == "embedding":
        _write_sentence_transformer(student, data, arch, tmp)
    else:
        _write_causal_lm(student, data, tmp)
    (tmp / "README.md").write_text(model_card(spec, data.meta, trial.number, arch, cfg, record))
    (tmp / "distill_nas.json").write_text(json.dumps({"arch": arch.to_dict(), **record}, indent=2, default=_plain))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _write_causal_lm(student: Any, data: PreparedData, folder: Path) -> None:
    """save_pretrained (safetensors), the teacher's tokenizer and a generation config."""
    from transformers import AutoTokenizer, GenerationConfig

    student.cpu().save_pretrained(folder)
    AutoTokenizer.from_pretrained(data.path / "teacher").save_pretrained(folder)
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
    ).save_pretrained(folder)


def _write_sentence_transformer(student: Any, data: PreparedData, arch: EncoderArch, folder: Path) -> None:
    """A sentence-transformers folder (Transformer, Pooling, Dense projection, Normalize) saved
    by sentence-transformers itself."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer

    hf = folder.with_name(folder.name + ".hf")
    student = student.cpu().eval()
    student.encoder.save_pretrained(hf)
    AutoTokenizer.from_pretrained(data.path / "teacher").save_pretrained(hf)
    modules: list[Any] = [
        models.Transformer(str(hf), max_seq_length=data.meta["block_length"]),
        models.Pooling(arch.hidden, pooling_mode=student.pooling["mode"]),
    ]
    if student.projection is not None:
        weight = student.projection.weight.detach().clone()
        modules.append(
            models.Dense(
                arch.hidden, weight.shape[0], bias=False, activation_function=torch.nn.Identity(), init_weight=weight
            )
        )
    if student.pooling["normalize"]:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    shutil.rmtree(hf, ignore_errors=True)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


__all__ = ["checkpoint_dir", "export_dir", "full_distill", "select_trial"]
