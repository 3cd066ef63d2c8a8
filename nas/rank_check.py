"""How far the front can be trusted: brief-run quality against full-run quality on trials that
span the brief-quality range, beside the proxy users would otherwise trust (the non-embedding
parameter count, as LTS does), each as Kendall's tau and Spearman's rho with a bootstrap
interval. Full runs are ordinary `nas distill` runs in the study's storage; one that exists
already counts and is never run again."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from distill.errors import InputError
from distill.tasks import quality_metrics
from nas.recipe import apply_recipe
from nas.spec import StudySpec
from nas.study import (
    StudyRecord,
    TrialRecord,
    distilled_records,
    distinct_complete,
    distinct_evaluated,
    front_trials,
    is_feasible,
)
from nas.study._record import ARCH_SHORT, PRUNED_AT, RECIPE, TRAIN_STEPS

logger = logging.getLogger(__name__)

PROXY = "non_embedding_params"
RESAMPLES = 2000
LEVEL = 0.95
MIN_FOR_INTERVAL = 10
"""the fewest trials a bootstrap interval is given for: resampling a handful of trials gives
intervals that mean little (a perfectly ordered sample resamples into perfectly ordered ones
only: [1, 1] whatever its size), so below it only the permutation test's p speaks"""
PERMUTATIONS = 9999


def reusable(study: optuna.Study, spec: StudySpec) -> set[str]:
    """Trials whose recorded full run had the spec's `[full]` budget (records made before
    budgets were recorded count too): one never reruns, a run of another budget is not mixed in."""
    records = distilled_records(study).items()
    return {n for n, r in records if r.get("budget", _budget(spec, r)) == _budget(spec, r)}


def _budget(spec: StudySpec, record: dict) -> dict:
    """The `[full]` budget a run of `record` had under this spec (with its trial's recipe)."""
    return dataclasses.asdict(apply_recipe(spec.loss, spec.full, record.get(RECIPE))[1])


def pick_trials(study: optuna.Study, metric: str, direction: str, k: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    """`k` feasible complete trials spanning the brief range of `metric`: the candidates sorted
    by it and cut into `k` strata of neighbours, one trial drawn from each with `seed`; the
    front's best at `metric` (the best brief value, in the first stratum) takes the first
    stratum's draw, so the pick users would make is checked. The plan depends on the seed and
    the study's trials alone, not on which trials earlier runs distilled (those are reused)."""
    candidates = [t for t in distinct_complete(study) if is_feasible(t) and metric in t.user_attrs]
    if len(candidates) < 3:
        raise InputError(
            f"--trials: the study has {len(candidates)} complete feasible trial(s); a rank check needs at least 3"
        )
    k = min(k, len(candidates))
    sign = 1.0 if direction == "min" else -1.0
    ordered = sorted(candidates, key=lambda t: (sign * t.user_attrs[metric], t.number))
    rng = np.random.default_rng(seed)
    picks = [ordered[int(rng.choice(stratum))] for stratum in np.array_split(np.arange(len(ordered)), k)]
    front = [t for t in front_trials(study) if metric in t.user_attrs]
    if front:
        best = min(front, key=lambda t: sign * t.user_attrs[metric])
        if best.number not in {t.number for t in picks}:
            picks[0] = best
    return sorted(picks, key=lambda t: t.number)


def pick_stopped(study: optuna.Study, k: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    """`k` trials the multi-fidelity scheduler stopped at a rung, spanning their sizes: sorted
    by non-embedding parameters, cut into `k` strata, one drawn from each with `seed` (a stream
    of its own: the complete trials' plan does not move)."""
    stopped = sorted(
        (t for t in distinct_evaluated(study) if TrialRecord(t).outcome == "stopped at a rung" and PROXY in t.user_attrs),
        key=lambda t: (t.user_attrs[PROXY], t.number),
    )
    k = min(k, len(stopped))
    if k == 0:
        return []
    rng = np.random.default_rng([seed, 1])
    return sorted((stopped[int(rng.choice(s))] for s in np.array_split(np.arange(len(stopped)), k)), key=lambda t: t.number)


def scheduler_regret(stopped: list[dict[str, Any]], complete: list[dict[str, Any]], metric: str, direction: str) -> dict[str, Any]:
    """What stopping trials at rungs cost, judged by full runs: for each stopped trial fully
    distilled, the completed trials (fully distilled) at least as large that it beats at
    `metric` (rows: {"trial", "full": {metric: value}, PROXY: size}). A stopped trial that beats
    one would have dominated it on a front of full runs: the scheduler stopped a better
    student. `share`: the stopped trials that beat at least one."""
    sign = 1.0 if direction == "min" else -1.0
    beaten = {}
    for s in stopped:
        if s["full"][metric] is None:
            continue
        beaten[str(s["trial"])] = [  # keys as the study stores them (JSON)
            c["trial"]
            for c in complete
            if c["full"][metric] is not None and c[PROXY] >= s[PROXY] and sign * s["full"][metric] < sign * c["full"][metric]
        ]
    judged = len(beaten)
    worse = sum(bool(v) for v in beaten.values())
    return {"metric": metric, "stopped": judged, "regretted": worse, "share": worse / judged if judged else None, "beats": beaten}


def correlations(predictor: list[float], target: list[float], seed: int) -> dict[str, Any]:
    """Kendall's tau and Spearman's rho of `predictor` against `target` over n trials, each with
    the one-sided p of a permutation test (the chance that a random order of the trials agrees
    at least as well; exact where n! <= `PERMUTATIONS`) and, from `MIN_FOR_INTERVAL` trials, a
    percentile bootstrap interval over resampled trials (pairs kept together; `LEVEL`,
    `RESAMPLES`, `seed`); below it the interval is None."""
    from scipy import stats

    x, y = np.asarray(predictor, dtype=float), np.asarray(target, dtype=float)
    out: dict[str, Any] = {"n": len(x)}
    for name, fn in (("kendall_tau", stats.kendalltau), ("spearman", stats.spearmanr)):
        out[name] = _finite(fn(x, y).statistic)
        with warnings.catch_warnings():  # a constant predictor gives NaN
            warnings.simplefilter("ignore")
            test = stats.permutation_test(
                (x,),
                lambda a, fn=fn: fn(a, y).statistic,
                permutation_type="pairings",
                alternative="greater",
                n_resamples=PERMUTATIONS,
                rng=np.random.default_rng(seed),
            )
        out[f"{name}_p"] = _finite(test.pvalue)
        if len(x) < MIN_FOR_INTERVAL:
            out[f"{name}_interval"], out[f"{name}_resamples"] = None, 0
            continue
        with warnings.catch_warnings():  # resamples that repeat one trial only (few trials) give NaN
            warnings.simplefilter("ignore")
            boot = stats.bootstrap(
                (x, y),
                lambda a, b, fn=fn: fn(a, b).statistic,
                paired=True,
                vectorized=False,
                n_resamples=RESAMPLES,
                confidence_level=LEVEL,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        # scipy's interval is NaN as soon as one resample is: the percentiles of the others.
        values = boot.bootstrap_distribution[np.isfinite(boot.bootstrap_distribution)]
        tail = 100 * (1 - LEVEL) / 2
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (math.nan, math.nan)
        out[f"{name}_interval"] = [_finite(low), _finite(high)]
        out[f"{name}_resamples"] = int(len(values))
    return out


def _finite(value: Any) -> float | None:
    """`value` as a float, or None where there is none or it is NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def measure(
    spec: StudySpec,
    study: optuna.Study,
    k: int,
    *,
    distill_one: Callable[[optuna.trial.FrozenTrial], dict[str, Any]],
    overwrite: bool = False,
    stopped: int = 0,
) -> dict[str, Any]:
    """Pick `k` complete trials and `stopped` trials the scheduler stopped at a rung, fully
    distill those without a full run (`distill_one`, which records it on the study as `nas
    distill` does), correlate brief with full quality over the complete ones, judge the
    scheduler by the stopped ones (`scheduler_regret`), store the result on the study, return
    it. A picked trial whose full run had another `[full]` budget is redistilled, replacing
    its export, only with `overwrite`; otherwise nothing runs."""
    quality = quality_metrics(spec.task)
    metric, direction = spec.objectives.metrics[0]
    done = reusable(study, spec)
    complete = pick_trials(study, metric, direction, k, spec.study.seed)
    halted = pick_stopped(study, stopped, spec.study.seed)
    picks = sorted(complete + halted, key=lambda t: t.number)
    other = [t.number for t in picks if str(t.number) in distilled_records(study) and str(t.number) not in done]
    if other and not overwrite:
        raise InputError(
            f"[full]: trial(s) {', '.join(map(str, other))} were fully distilled with another [full] budget; "
            "give the same budget, or pass --overwrite to redistill them (their exports are replaced)"
        )
    for i, trial in enumerate(picks, 1):
        if str(trial.number) in done:
            logger.info("trial %d (%d/%d): fully distilled already", trial.number, i, len(picks))
            continue
        logger.info("trial %d (%d/%d): full distillation", trial.number, i, len(picks))
        distill_one(trial)
    distilled = distilled_records(study)
    rows = [
        {
            "trial": t.number,
            ARCH_SHORT: TrialRecord(t).arch_short,
            "brief": {m: _finite(t.user_attrs.get(m)) for m in quality},
            "full": {m: _finite(distilled[str(t.number)]["metrics"].get(m)) for m in quality},
            "full_steps": distilled[str(t.number)]["steps"],
            "full_best_step": distilled[str(t.number)].get("best_step"),
            PROXY: t.user_attrs[PROXY],
        }
        for t in picks
    ]
    stopped_rows = [r for r in rows if r["trial"] in {t.number for t in halted}]
    rows = [r for r in rows if r not in stopped_rows]
    result: dict[str, Any] = {
        "trials": rows,
        "seed": spec.study.seed,
        "resamples": RESAMPLES,
        "level": LEVEL,
        "brief_steps": sorted({t.user_attrs.get(TRAIN_STEPS) for t in picks if t.user_attrs.get(TRAIN_STEPS)}),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "objective": metric,
        "metrics": {},
    }
    for m, d in quality.items():
        usable = [r for r in rows if r["brief"][m] is not None and r["full"][m] is not None]
        if len(usable) < 3:
            continue
        full = [r["full"][m] for r in usable]
        # The proxy's sign: more parameters should mean better quality (lower where lower is better).
        proxy = [(-r[PROXY] if d == "min" else r[PROXY]) for r in usable]
        result["metrics"][m] = {
            "direction": d,
            "brief": correlations([r["brief"][m] for r in usable], full, spec.study.seed),
            "proxy": correlations(proxy, full, spec.study.seed),
        }
    result["pick"] = pick_gap(rows, {t.number for t in front_trials(study)}, metric, direction)
    for r in stopped_rows:
        r["stopped_at"] = TrialRecord(study.trials[r["trial"]]).attrs.get(PRUNED_AT)
    result["stopped"] = stopped_rows
    result["regret"] = scheduler_regret(stopped_rows, rows, metric, direction) if stopped_rows else None
    StudyRecord(study).record_rank_check(result)
    return result


def pick_gap(rows: list[dict[str, Any]], front: set[Any], metric: str, direction: str) -> dict[str, Any] | None:
    """The front's best brief pick at `metric` (what `nas distill --best` takes) against the
    best full run among `rows` ({"trial", "brief": {metric: value}, "full": {...}}, None for a
    value there is none of): how much following the front costs. None where the pick has no
    full run to judge it by."""
    sign = 1.0 if direction == "min" else -1.0
    on_front = [r for r in rows if r["trial"] in front and r["brief"][metric] is not None]
    done = [r for r in rows if r["full"][metric] is not None]
    if not on_front or not done:
        return None
    pick = min(on_front, key=lambda r: sign * r["brief"][metric])
    if pick["full"][metric] is None:
        return None
    best = min(done, key=lambda r: sign * r["full"][metric])
    scale = abs(best["full"][metric]) or 1.0
    gap = sign * (pick["full"][metric] - best["full"][metric]) / scale
    return {
        "metric": metric,
        "trial": pick["trial"],
        "full": pick["full"][metric],
        "best_trial": best["trial"],
        "best_full": best["full"][metric],
        "gap": gap,
    }


__all__ = ["PROXY", "correlations", "measure", "pick_gap", "pick_stopped", "pick_trials", "scheduler_regret"]
