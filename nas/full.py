"""Full distillation of an architecture picked from the front, exported as a folder the
ecosystem loads, with a model card; the study remembers what was distilled. One path for
every task."""

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

from distill import runtime, train
from distill.cache import PRECISION
from distill.errors import InputError
from distill.files import file_written_whole, written_whole
from distill.loop import LAST_CHECKPOINT, SOLO, Workers
from distill.precision import computing_in, resolve
from distill.run import build_loss, build_student
from distill.tasks import quality_metrics
from distill.tasks.base import scores_and_text
from nas.model_card import model_card
from nas.prepare import (
    eval_set_info,
    eval_set_teacher_metrics,
    prepare_eval_sets,
    prepare_other_teachers,
    prepare_study,
)
from nas.recipe import apply_recipe
from nas.search.trial import held_out_scores, pick_device
from nas.spec import StudySpec
from nas.study import StudyRecord, TrialRecord, distilled_records, distinct_complete, front_trials
from nas.study._record import ARCH, EVAL_SETS, EVAL_SETS_INFO, RECIPE, RUNTIME_FILES, TEACHER_RUNTIME
from nas.study.locks import study_writer
from nas.texts import TEXTS, save_generated, save_references

logger = logging.getLogger(__name__)


def select_trial(
    study: optuna.Study,
    *,
    metrics: dict[str, str],
    number: int | None = None,
    best: str | None = None,
    max_params: float | None = None,
) -> optuna.trial.FrozenTrial:
    """The trial `number`, or the front trial best at quality metric `best` (one of `metrics`,
    name -> direction) within `max_params`."""
    if not distinct_complete(study):
        raise InputError(f"study {study.study_name!r} has no complete trial; run `nas search` first")
    if number is not None:
        if not 0 <= number < len(study.trials):
            raise InputError(f"--trial: no trial {number} in study {study.study_name!r} (0-{len(study.trials) - 1})")
        trial = study.trials[number]
        # A trial the scheduler stopped at a rung is a whole architecture: it can be fully
        # distilled (`nas rank-check` does, to judge the scheduler); one never trained cannot.
        if trial.state != optuna.trial.TrialState.COMPLETE and TrialRecord(trial).outcome != "stopped at a rung":
            reason = TrialRecord(trial).fail_reason or ""
            raise InputError(f"--trial: trial {number} is {trial.state.name}, not COMPLETE {reason}".rstrip())
        twin = TrialRecord(trial).duplicate_of
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


def has_checkpoint(spec: StudySpec, number: int) -> bool:
    """Whether a killed full run of trial `number` left a checkpoint to resume from."""
    return (checkpoint_dir(spec, number) / LAST_CHECKPOINT).exists()


FINGERPRINT = "fingerprint.json"
"""in a run's checkpoint folder: what the run was started with (architecture, budget, loss, the
teacher's outputs on the data), which a resumed run must match"""
EXPORT_RECORD = "distill_nas.json"
"""in an export: the architecture and the study's record of the run"""


def full_distill(
    spec: StudySpec,
    trial: optuna.trial.FrozenTrial,
    study: optuna.Study,
    *,
    resume: bool = False,
    restart: bool = False,
    overwrite: bool = False,
    command: str = "",
    on_step: Callable[[int, int, float], None] | None = None,
    address: str | None = None,
    runtime_files: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Distill `trial`'s architecture with the `[full]` budget and the trial's recipe (where
    the search sampled one), export it, record it. One run per trial at a time; the
    checkpoints of an unfinished run are continued (`resume`, when they were made with the
    same settings) or discarded (`restart`), never silently. The export holds the edge
    runtime's files (`distill.runtime`) at the precisions `runtime_files` and those
    `[runtime]` measures, measured beside the teacher's in the same runtime."""
    doing = f"trial {trial.number} of study {spec.name!r} is being distilled"
    precisions = tuple(p for p in runtime.PRECISIONS if p in {*runtime_files, *spec.runtime.measure})
    with study_writer(spec, f"distill-{trial.number}", doing, lambda: study):
        return _full_distill(spec, trial, study, resume, restart, overwrite, command, on_step, address, precisions)


def _full_distill(
    spec: StudySpec,
    trial: optuna.trial.FrozenTrial,
    study: optuna.Study,
    resume: bool,
    restart: bool,
    overwrite: bool,
    command: str,
    on_step: Callable[[int, int, float], None] | None,
    address: str | None = None,
    precisions: tuple[str, ...] = (),
) -> dict[str, Any]:
    out = export_dir(spec, trial.number)
    ckpt = checkpoint_dir(spec, trial.number)
    if not overwrite and (recovered := _record_left_export(study, trial, out, ckpt)) is not None:
        return recovered
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} already holds a model; pass --overwrite to replace it")
    if has_checkpoint(spec, trial.number) and not (resume or restart):
        raise InputError(
            f"--resume: {ckpt} holds the checkpoint of an unfinished run of trial {trial.number}; "
            "pass --resume to continue it or --restart to discard it"
        )
    if restart or not has_checkpoint(spec, trial.number):
        if resume:
            logger.warning("no checkpoint in %s: starting from the beginning", ckpt)
        shutil.rmtree(ckpt, ignore_errors=True)
    task = spec.task
    recipe = TrialRecord(trial).recipe
    loss, full = apply_recipe(spec.loss, spec.full, recipe)
    arch = TrialRecord(trial).arch
    settings = run_settings(dataclasses.replace(spec, loss=loss, full=full), arch)
    _check_fingerprint(ckpt, settings, write=False)  # settings first: before anything is computed
    temperature = loss.params.get("temperature") if recipe else None  # the search's cache at the trial's
    data = prepare_study(spec, temperature)  # the spec's own loss: the search's cache key
    others = prepare_other_teachers(spec, data, temperature)
    evals = prepare_eval_sets(spec)  # before training: a bad source fails before the run, not after
    spec = dataclasses.replace(spec, loss=loss, full=full)
    resume = _check_fingerprint(ckpt, settings | {"teacher outputs": [d.path.name for d in (data, *others)]})
    logger.info("full distillation of trial %d (%s)", trial.number, task.describe(arch))
    run = distill_arch(
        spec, arch, data, evals=evals, others=others, on_step=on_step, checkpoint_dir=ckpt, resume=resume, address=address
    )
    result, device = run.result, run.device
    record = {
        "export": str(out),
        "metrics": run.metrics,
        EVAL_SETS: run.eval_sets,
        "budget": dataclasses.asdict(spec.full),
        **({RECIPE: recipe} if recipe else {}),
        "teachers": [d.teacher_name for d in (data, *others)],
        "teacher_eval_sets": eval_set_teacher_metrics(evals),
        EVAL_SETS_INFO: eval_set_info(evals),
        "brief": {k: v for k, v in TrialRecord(trial).metrics(task).items() if k in quality_metrics(task)},
        "brief_eval_sets": TrialRecord(trial).eval_sets or {},
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "evals": result.evals,
        "train_seconds_last_run": run.seconds,
        "device": str(device),
        PRECISION: run.precision,
        "command": command,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    # The task's folder plus the model card and `distill_nas.json`, published whole.
    logger.info("exporting trial %d to %s", trial.number, out)
    with written_whole(out) as tmp:
        task.export(run.student, data, tmp)
        if precisions:
            record |= runtime_export(spec, run.student, data, tmp, precisions, record["metrics"])
        if run.texts:  # what the scores were computed on, to recompute them with other tools
            save_references(tmp / TEXTS, {"eval": data, **evals})
            save_generated(tmp / TEXTS, "student", run.texts)
            record["texts"] = sorted(f"{TEXTS}/{p.name}" for p in (tmp / TEXTS).iterdir())
        (tmp / "README.md").write_text(model_card(spec, data.meta, trial.number, arch, record))
        (tmp / EXPORT_RECORD).write_text(json.dumps({ARCH: arch, **record}, indent=2, default=_plain))
    StudyRecord(study).record_distilled(trial.number, record)
    shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete and recorded: its checkpoints are spent
    return record


def _record_left_export(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, out: Path, ckpt: Path
) -> dict[str, Any] | None:
    """The record of an export of this trial's architecture that a killed run published but
    did not record (recorded now; the checkpoints of the run that made it removed), or None."""
    try:
        exported = json.loads((out / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    record = {k: v for k, v in exported.items() if k != ARCH}
    known = distilled_records(study).get(str(trial.number), {})
    if exported.get(ARCH) != TrialRecord(trial).arch or str(record.get("finished")) <= str(known.get("finished", "")):
        return None  # another study's export, or one recorded already (or older than the record)
    logger.info("recording the export of trial %d that an interrupted run left in %s", trial.number, out)
    StudyRecord(study).record_distilled(trial.number, record)
    made = ckpt / FINGERPRINT
    if made.exists() and made.stat().st_mtime <= (out / EXPORT_RECORD).stat().st_mtime:  # that run's, not a later one's
        shutil.rmtree(ckpt, ignore_errors=True)
    return record


TEACHER_RUNTIME_FILE = "runtime_teacher.json"
"""in a study's folder: the teacher's runtime metrics, by the cache of its outputs the held-out split is in"""


def runtime_export(
    spec: StudySpec, student: torch.nn.Module, data: Any, folder: Path, precisions: tuple[str, ...], metrics: dict[str, Any]
) -> dict[str, Any]:
    """The edge runtime's files of `student` in `folder`'s `onnx/` at `precisions`, their
    runtime metrics added to `metrics`; the record's keys of them and of the teacher's."""
    logger.info("exporting the student to ONNX (%s) and measuring it in ONNX Runtime", ", ".join(precisions))
    files = runtime.export(spec.task, student, data, folder / runtime.FOLDER, precisions)
    for p in precisions:
        metrics |= runtime.measure_files(spec.task, files[p], data, p)
    return {
        RUNTIME_FILES: {p: [f"{runtime.FOLDER}/{f.name}" for f in files[p].values()] for p in precisions},
        TEACHER_RUNTIME: teacher_runtime(spec, data, precisions),
    }


def teacher_runtime(spec: StudySpec, data: Any, precisions: tuple[str, ...]) -> dict[str, float]:
    """The teacher's runtime metrics at `precisions` (`distill.runtime.measure` on the
    teacher as a student), measured once per cache of teacher outputs, thread count and ONNX
    Runtime release, and kept in the study's folder."""
    path = spec.out_dir / TEACHER_RUNTIME_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    import onnxruntime

    key = f"{data.path.name} threads={torch.get_num_threads()} onnxruntime={onnxruntime.__version__}"
    have = stored.get(key, {})
    missing = tuple(p for p in precisions if not any(runtime.precision_of(k) == p for k in have))
    if missing:
        task = spec.task
        logger.info("measuring the teacher in ONNX Runtime (%s), once per study", ", ".join(missing))
        teacher = task.as_student(task.load_teacher(data.teacher_source), data)
        have |= runtime.measure(task, teacher, data, missing, missing)
        stored[key] = have
        with file_written_whole(path) as tmp:
            tmp.write_text(json.dumps(stored, indent=2))
    return {k: v for k, v in have.items() if runtime.precision_of(k) in precisions}


def run_settings(spec: StudySpec, arch: dict[str, Any]) -> dict[str, Any]:
    """The settings a full run's result depends on: the architecture, the `[full]` budget, the
    loss, the seed and the precision it computes in (with the teachers' outputs on the data,
    its fingerprint)."""
    budget = dataclasses.asdict(spec.full)
    budget.pop("checkpoint_every")  # when checkpoints are written changes nothing the run computes
    settings = {
        ARCH: arch,
        "full": budget,
        "loss": dataclasses.asdict(spec.loss),
        "study.seed": spec.study.seed,
        PRECISION: resolve(spec.resources.precision, full_device(spec)),
        "device": full_device(spec).type,  # not compared: it tells how older runs computed
    }
    return json.loads(json.dumps(settings, default=_plain))


def _check_fingerprint(ckpt: Path, fingerprint: dict[str, Any], write: bool = True) -> bool:
    """Whether the run continues from `ckpt`'s checkpoint (`InputError` when it was made with
    other values of `fingerprint`'s keys); a run that starts afresh writes its fingerprint
    (the teachers' outputs' cache keys included, which cover the teachers' files and the
    data's) there first."""
    if (ckpt / LAST_CHECKPOINT).exists():
        try:
            stored = json.loads((ckpt / FINGERPRINT).read_text())
            stored.setdefault("loss", stored.pop("distill.loss", "(none)"))  # as runs made before [loss] named it
            # runs made before the setting: bf16 autocast on a GPU, fp32 on a CPU (as this run's device)
            stored.setdefault(PRECISION, "bf16" if fingerprint.get("device") == "cuda" else "fp32")
            if isinstance(stored.get("full"), dict):
                stored["full"].setdefault("workers", 1)  # runs made before [full] workers were one process
        except (OSError, ValueError):
            raise InputError(
                f"--resume: the checkpoint in {ckpt} has no fingerprint of its settings (an earlier version made it); "
                "pass --restart to discard it"
            ) from None
        changed = _first_difference({k: stored.get(k, "(none)") for k in fingerprint if k != "device"}, without(fingerprint, "device"))
        if changed is not None:
            key, then, now = changed
            if key.startswith("teacher outputs"):
                raise InputError(
                    f"--resume: the checkpoint in {ckpt} was made on other teacher outputs (a file of the teacher "
                    f"or of the data changed: cache {then} then, {now} now); restore them, or pass --restart to discard it"
                )
            raise InputError(
                f"--resume: the checkpoint in {ckpt} was made with {key} = {then}, this run has {now}; "
                "give the same settings, or pass --restart to discard it"
            )
        return True
    if not write:
        return False
    ckpt.mkdir(parents=True, exist_ok=True)
    with file_written_whole(ckpt / FINGERPRINT) as tmp:
        tmp.write_text(json.dumps(fingerprint, indent=2))
    return False


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def _first_difference(old: Any, new: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, old value, new value) of the first place two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(k, "(none)"), new.get(k, "(none)"), f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
        return None
    return None if old == new else (key or "the fingerprint", json.dumps(old), json.dumps(new))


@dataclasses.dataclass
class FullRun:
    """A finished full run: the student, the loop's result, its metrics on the held-out split
    and its size, its quality on each extra evaluation set, the text it generated on each
    held-out set (tasks that generate), the device, the seconds spent training and the precision."""

    student: torch.nn.Module
    result: Any
    metrics: dict[str, Any]
    eval_sets: dict[str, dict[str, float]]
    texts: dict[str, list[str]]
    device: torch.device
    seconds: float
    precision: str = "fp32"


def distill_arch(
    spec: StudySpec,
    arch: dict[str, Any],
    data: Any,
    *,
    evals: dict[str, Any] | None = None,
    others: tuple[Any, ...] = (),
    on_step: Callable[[int, int, float], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    address: str | None = None,
) -> FullRun:
    """The full run of one architecture with the `[full]` budget (the best checkpoint on the
    validation split by the first objective kept), measured on the held-out split and `evals`:
    in this process, or with `[full] workers` > 1 as a Ray Train job (`nas.parallel`, on the
    cluster at `address` or a Ray of this machine's own)."""
    device = full_device(spec)
    start = time.perf_counter()
    with computing_in(resolve(spec.resources.precision, device)) as precision:
        if spec.full.workers > 1:
            from nas.parallel import train_on_workers

            if checkpoint_dir is None:
                raise ValueError("a run on several workers needs a checkpoint folder (where worker 0 leaves the weights)")
            student, result = train_on_workers(spec, arch, data, others, on_step, checkpoint_dir, address, device, precision)
        else:
            student, result = train_full(spec, arch, data, device, others, on_step, checkpoint_dir, resume)
        seconds = time.perf_counter() - start
        quality, sets, texts = held_out_scores(spec.task, student, data, evals or {}, device)
        metrics = quality | spec.task.size(student, data, device)
    return FullRun(student, result, metrics, sets, texts, device, seconds, precision)


def full_device(spec: StudySpec) -> torch.device:
    """Where a full run trains: a GPU where the machine has one (or the spec asks for one)."""
    return pick_device(spec.resources.gpus or float(torch.cuda.is_available()))


def train_full(
    spec: StudySpec,
    arch: dict[str, Any],
    data: Any,
    device: torch.device,
    others: tuple[Any, ...],
    on_step: Callable[[int, int, float], None] | None,
    checkpoint_dir: Path | None,
    resume: bool,
    parallel: Callable[[torch.nn.Module, Callable[[Any], Any]], tuple[Callable[[Any], Any], Workers]] | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Build the student and its loss and train it with the `[full]` budget, keeping the best
    weights on the validation split by the first objective: in one process, or in each worker
    of a run on several, where `parallel(student, loss)` gives the loss run across the workers
    and the `Workers` (`nas.parallel`). The student and the loop's result."""
    task, budget = spec.task, spec.full
    metric, direction = spec.objectives.metrics[0]
    sign = 1.0 if direction == "min" else -1.0
    student = build_student(task, arch, data, device, spec.study.seed)
    loss = build_loss(task, student, arch, data, spec.loss, budget.on_policy, device, others)
    loss, workers = parallel(student, loss) if parallel is not None else (loss, SOLO)

    def validate(model: torch.nn.Module) -> float:
        return sign * scores_and_text(task.evaluate(model, data, "valid", device))[0][metric]

    result = train(
        student,
        budget,
        loss,
        task.lengths(data, "train"),
        seed=spec.study.seed,
        device=device,
        on_step=on_step,
        validate=validate,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        workers=workers,
    )
    return student, result


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


__all__ = ["checkpoint_dir", "distill_arch", "export_dir", "full_distill", "has_checkpoint", "select_trial"]
