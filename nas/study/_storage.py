"""A study's storage: any Optuna storage URL (SQLite, PostgreSQL, a journal file), the study
created or loaded from it and checked against its spec, and writes to trials that another
process ran (a Ray trial, a killed run's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from distill.errors import InputError
from nas._compat import storage_of, trial_id
from nas.spec import JOURNAL, StudySpec
from nas.study._record import FAIL_REASON, INTERRUPTED, TASK, StudyRecord


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage of a URL: a database SQLAlchemy knows, or a journal file (`journal:///`)."""
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL)))
    return optuna.storages.get_storage(url)


def open_study(spec: StudySpec) -> optuna.Study:
    """Create or load the study; refuse a stored study whose objectives, task, constraints or
    sampler differ from the spec's. Writes nothing else (`stamp_study` does, once the run
    holds the study)."""
    url = spec.storage_url
    if url.startswith("sqlite:///"):
        spec.out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in spec.objectives.metrics]
    directions = ["minimize" if d == "min" else "maximize" for _, d in spec.objectives.metrics]
    study = optuna.create_study(
        storage=open_storage(url), study_name=spec.name, directions=directions, load_if_exists=True
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions or (study.metric_names and study.metric_names != names):
        raise InputError(
            f"objectives: the stored study {spec.name!r} optimizes {study.metric_names or stored}; "
            f"the spec asks for {names}; give the study a new name (study.name)"
        )
    record = StudyRecord(study)
    stored_task = study.user_attrs.get(TASK)
    if stored_task not in (None, spec.study.task):
        raise InputError(f"study.task: the stored study {spec.name!r} is a {stored_task} study; give it a new name")
    bounds = {b.metric: b.limit for b in spec.constraints.bounds}
    if (record.constraints or {}) != bounds and study.trials:
        raise InputError(
            f"constraints: the stored study {spec.name!r} was searched with {record.constraints or 'none'}; "
            f"the spec asks for {bounds or 'none'}; its trials were judged by the old ones, give the study a new name"
        )
    stored_sampler = record.sampler
    if stored_sampler and spec.study.sampler not in ("", stored_sampler):
        raise InputError(
            f"study.sampler: the stored study {spec.name!r} samples with {stored_sampler}; "
            f"a resumed study keeps its sampler (give the study a new name to use {spec.study.sampler})"
        )
    return study


def load_existing_study(spec: StudySpec) -> optuna.Study:
    """The stored study of a spec, without creating one."""
    url = spec.storage_url
    for prefix in ("sqlite:///", JOURNAL):
        if url.startswith(prefix) and not Path(url.removeprefix(prefix)).exists():
            raise InputError(f"study.name: no study {spec.name!r} yet ({url} does not exist); run `nas search` first")
    try:
        study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    except KeyError:
        raise InputError(f"study.name: no study {spec.name!r} in {spec.storage_url}; run `nas search` first") from None
    stored = StudyRecord(study).task.name
    if stored != spec.study.task:
        raise InputError(f"study.task: the stored study {spec.name!r} is a {stored} study, the spec says {spec.study.task}")
    return study


def set_trial_attrs(study: optuna.Study, number: int, attrs: dict[str, Any]) -> None:
    """Write attributes of trial `number`, which another process may have run."""
    storage, tid = storage_of(study), trial_id(study, number)
    for key, value in attrs.items():
        storage.set_trial_user_attr(tid, key, value)


def fail_trial(study: optuna.Study, number: int, reason: str) -> None:
    """Record a trial as FAIL with its reason (a trial is never left RUNNING)."""
    set_trial_attrs(study, number, {FAIL_REASON: reason})
    storage_of(study).set_trial_state_values(trial_id(study, number), TrialState.FAIL)


def mark_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed run become FAIL; returns how many."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        fail_trial(study, t.number, INTERRUPTED)
    return len(stale)
