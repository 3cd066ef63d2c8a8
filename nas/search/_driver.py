"""The search's driver: Ray Tune runs the trials, Optuna (through OptunaSearch) samples
architectures and stores every trial in the study's storage, the source of truth of a study.
Ray itself is imported only once a search runs (`nas.search._ray`)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import optuna

from distill import PreparedData
from distill.errors import InputError
from nas._compat import ray_single_machine, storage_of
from nas.prepare import (
    eval_set_info,
    eval_set_teacher_metrics,
    prepare_eval_sets,
    prepare_other_teachers,
    prepare_study,
)
from nas.search.sampling import DEFAULT_SAMPLER, make_sampler
from nas.search.scheduler import pareto_asha
from nas.search.trial import TrialPlan, plan_stops, recorded
from nas.spec import JOURNAL, StudySpec
from nas.study import (
    StudyRecord,
    TrialRecord,
    distinct_evaluated,
    find_duplicate,
    front_trials,
    mark_interrupted,
    open_study,
)
from nas.study._record import ARCH, DUPLICATE_OF, INTERRUPTED, NOT_TRAINED, RECIPE
from nas.study.locks import shared_storage, study_writer
from nas.texts import TEXTS, save_references

logger = logging.getLogger(__name__)

MAX_ROUNDS = 3
"""Tune runs at most this many rounds in a row that add no architecture (only repeats of earlier
ones) before the search stops short; a round that adds one starts the count again"""


def stamp_study(study: optuna.Study, spec: StudySpec) -> None:
    """Record what `open_study` checked: the objectives' names, the task, the constraints and
    the sampler (a resumed study keeps its own)."""
    StudyRecord(study).stamp(
        [n for n, _ in spec.objectives.metrics],
        spec.study.task,
        {b.metric: b.limit for b in spec.constraints.bounds},
        spec.study.sampler or DEFAULT_SAMPLER,
    )


def trial_plan(
    spec: StudySpec,
    data: PreparedData,
    evals: dict[str, PreparedData] | None = None,
    others: tuple[PreparedData, ...] = (),
    by_temperature: dict[float, tuple[PreparedData, tuple[PreparedData, ...]]] | None = None,
) -> TrialPlan:
    """What every trial of the study's search runs with."""
    mf = spec.multi_fidelity
    return TrialPlan(
        spec.study.task,
        data,
        spec.brief,
        spec.loss,
        spec.storage_url,
        spec.name,
        tuple(n for n, _ in spec.objectives.metrics),
        spec.study.seed,
        spec.resources.cpus,
        spec.resources.gpus,
        rungs=mf.rungs if mf.enabled else (1.0,),
        size_bounds=spec.constraints.on({m.name: m.kind for m in spec.task.metrics}, "size"),
        evals=evals or {},
        others=others,
        by_temperature=by_temperature or {},
        precision=spec.resources.precision,
        runtime=spec.runtime.measure,
    )


def run_search(
    spec: StudySpec,
    *,
    trials: int | None = None,
    address: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> optuna.Study:
    """Run (or continue) the study until it has evaluated `trials` distinct architectures
    (trained to the end, or stopped at a rung by multi-fidelity). One search per study at a
    time: another run holding it is named in the `InputError` raised before anything is
    touched. `on_progress` receives each finished trial's progress figures."""
    target = trials or spec.study.trials
    if address is None:  # a cluster's nodes are known once Ray has joined it
        check_resources(spec, None)
    elif not shared_storage(spec.storage_url):
        raise InputError(
            f"--storage: a search on a Ray cluster (--address) needs a storage that every node can write: "
            f"a database URL (postgresql://user@host/db) or a journal file on a shared filesystem ({JOURNAL}/shared/study.log); "
            f"{spec.storage_url.partition(':')[0]} is for one machine"
        )
    doing = f"study {spec.name!r} is being searched"
    with study_writer(spec, "search", doing, lambda: open_study(spec)) as study:
        return _search(spec, study, target, address, on_progress)


def check_resources(spec: StudySpec, nodes: list[dict[str, float]] | None) -> None:
    """Refuse, before the search starts, a trial's CPUs or GPUs that no node has (`nodes`:
    each node's resources; None: this machine's): Ray would wait forever to place it."""
    if nodes is None:
        import torch

        nodes = [{"CPU": len(os.sched_getaffinity(0)), "GPU": torch.cuda.device_count()}]
        where = "this machine has"
    else:
        where = f"the largest of the cluster's {len(nodes)} node(s) has"
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    asked = spec.resources
    if asked.cpus > cpus:
        raise InputError(f"resources.cpus: each trial asks for {asked.cpus:g} CPUs; {where} {cpus:g}")
    if asked.gpus > gpus:
        raise InputError(
            f"resources.gpus: each trial asks for {asked.gpus:g} GPU(s); {where} {gpus:g}; "
            "set resources.gpus = 0 to train on CPUs"
        )


def start_ray(address: str | None, **options: Any) -> None:
    """Join the cluster at `address`, or start a Ray of this machine's own that listens on
    127.0.0.1 only (never joining a cluster that RAY_ADDRESS or a running instance names)."""
    if address is None:
        ray_single_machine()  # Ray binds to the machine's routable address otherwise
    import ray

    logger.info("starting Ray%s", f" (joining {address})" if address else " on 127.0.0.1")
    ray.init(
        address=address or "local",
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        **({"_node_ip_address": "127.0.0.1"} if address is None else {}),
        **options,
    )


def _search(
    spec: StudySpec,
    study: optuna.Study,
    target: int,
    address: str | None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> optuna.Study:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing
    # Ctrl-C (or a stop from the service) ends the search: Tune's own handler would end only
    # the current round, and the next round would start sampling again.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    stamp_study(study, spec)  # only the holder of the study's search gets here
    stale = mark_interrupted(study)
    if stale:
        logger.info("marked %d trial(s) left RUNNING by an earlier run as FAIL", stale)
    done = len(distinct_evaluated(study))
    if done >= target:
        logger.info("study %s already holds %d/%d architectures", spec.name, done, target)
        return study
    if address is not None:  # the cluster's nodes, checked before the teacher runs
        import ray

        if not ray.is_initialized():
            start_ray(address)
        check_resources(spec, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    plan = _prepare_search(spec, study)  # before Ray is imported: what the driver holds beyond it is the teacher
    import ray

    if not ray.is_initialized():  # after the data and teachers: bad input is one line, before Ray prints
        start_ray(address)
    scheduler = _scheduler(spec, study, plan)  # one for every round: it keeps what each rung saw
    started = time.time()
    idle = 0
    while (before := len(distinct_evaluated(study))) < target:
        first = len(study.trials)
        _round(spec, study, plan, scheduler, target, target - before, started, on_progress)
        if len(distinct_evaluated(study)) > before:
            idle = 0
        elif not any(TrialRecord(t).is_repeat for t in study.get_trials(deepcopy=False)[first:]):
            logger.warning("no trial of this round was evaluated; stopping (see the trials' fail_reason and not_trained)")
            break
        elif (idle := idle + 1) >= MAX_ROUNDS:
            logger.warning("%d rounds in a row sampled only architectures the study holds; stopping short", idle)
            break
        if len(distinct_evaluated(study)) < target:
            logger.info("repeated, untrained or failed architectures left the study short; sampling more")
    from nas.search._ray import fmt_duration

    logger.info(
        "search done: %d/%d architectures, front of %d, %s",
        len(distinct_evaluated(study)),
        target,
        len(front_trials(study)),
        fmt_duration(time.time() - started),
    )
    return study


def _prepare_search(spec: StudySpec, study: optuna.Study) -> TrialPlan:
    """The data tokenized and the teachers' outputs cached (at each temperature the recipe may
    choose, on each extra evaluation set), what that found recorded with the study, and the
    plan every trial runs with."""
    data = prepare_study(spec)
    others = prepare_other_teachers(spec, data)
    record = StudyRecord(study)
    teachers = " + ".join(d.teacher_name for d in (data, *others))
    # Quality metrics are measured against the first teacher; the others' own, for reference.
    record.record_teachers(teachers, data, others)
    by_temperature = {}
    for t in spec.recipe.temperature:  # the teachers' outputs at each temperature the recipe may choose
        at_t = prepare_study(spec, t)
        by_temperature[t] = (at_t, prepare_other_teachers(spec, at_t, t))
    evals = prepare_eval_sets(spec)
    record.record_eval_sets(eval_set_teacher_metrics(evals), eval_set_info(evals))
    save_references(spec.out_dir / TEXTS, {"eval": data, **evals})  # what generated text is scored against
    return trial_plan(spec, data, evals, others, by_temperature)


def _define(spec: StudySpec, study: optuna.Study, plan: TrialPlan) -> Callable[[Any], dict[str, Any]]:
    """OptunaSearch's define-by-run space: an architecture (and a recipe) sampled and recorded
    on the Optuna trial, with what the trial's worker must know before it builds anything: a
    repeat of an earlier trial, or a size bound its parameter count breaks."""

    def define(trial: Any) -> dict[str, Any]:
        arch = spec.space.sample(trial)
        trial.set_user_attr(ARCH, arch)
        recipe = spec.recipe.sample(trial) if spec.recipe else None
        if recipe:
            trial.set_user_attr(RECIPE, recipe)
        config = {ARCH: arch, RECIPE: recipe, "optuna_trial": trial.number, DUPLICATE_OF: None}
        twin = find_duplicate(study, arch, trial.number, recipe)
        if twin is not None:
            trial.set_user_attr(DUPLICATE_OF, twin.number)
            return config | {DUPLICATE_OF: twin.number}
        counts = spec.task.param_counts(arch, plan.data)  # a bound on parameters costs nothing to check
        missed = plan.size_bounds.missed(counts)
        if missed is not None:
            return config | {NOT_TRAINED: f"infeasible before it started: {missed}", "counts": counts}
        return config

    return define


def _scheduler(spec: StudySpec, study: optuna.Study, plan: TrialPlan) -> Any:
    """Multi-fidelity's Pareto ASHA where the spec asks for rungs (None otherwise), told the
    stored trials' results at the same steps: a resumed search judges new trials against them."""
    mf = spec.multi_fidelity
    if not (mf.enabled and len(mf.rungs) > 1):
        return None
    metrics = [n for n, _ in spec.objectives.metrics]
    scheduler = pareto_asha(metrics, [d for _, d in spec.objectives.metrics], mf.reduction)
    stops = plan_stops(plan)[:-1]
    for t in distinct_evaluated(study):
        record = TrialRecord(t)
        for entry in record.rungs:
            if entry.get("step") not in stops:
                continue
            values = {**record.attrs, **entry}
            if all(math.isfinite(float(values.get(m, math.nan))) for m in metrics):
                scheduler.board.record(f"stored-{t.number}", stops.index(entry["step"]), values)
    return scheduler


def _round(
    spec: StudySpec,
    study: optuna.Study,
    plan: TrialPlan,
    scheduler: Any,
    target: int,
    remaining: int,
    started: float,
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> None:
    """One Tune run of up to `remaining` trials; a trial it leaves RUNNING is recorded FAIL."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from nas.search._ray import Progress, StudySearcher, trainable

    metrics = [n for n, _ in spec.objectives.metrics]
    modes = [d for _, d in spec.objectives.metrics]
    sampler = make_sampler(StudyRecord(study).sampler, seed=spec.study.seed + len(study.trials), trials=target)
    inner = OptunaSearch(
        space=_define(spec, study, plan), metric=metrics, mode=modes, sampler=sampler, study_name=spec.name, storage=storage_of(study)
    )
    stopped = getattr(scheduler, "stopped", {})  # without multi-fidelity no trial stops at a rung
    searcher = StudySearcher(inner, study, metrics, recorded(spec.study.task), spec.constraints, spec.out_dir / TEXTS, stopped)
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, plan=plan), resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=spec.study.concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str((spec.out_dir / "ray").resolve()),
            verbose=0,
            callbacks=[Progress(study, spec.task, remaining, target, started, on_progress, stopped)],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        tuner.fit()
    finally:
        searcher.fail_unfinished(INTERRUPTED)
        # This run holds the study's search, so a trial still RUNNING once Tune has returned is
        # one of its own that was asked for but never handed to the searcher (Ctrl-C between the
        # two): it is failed too, never left RUNNING.
        mark_interrupted(study)


__all__ = ["MAX_ROUNDS", "check_resources", "run_search", "stamp_study", "start_ray", "trial_plan"]
