"""Samplers and multi-fidelity compared on the same work, without training per comparison.

The causal-LM demo's space without grouped-query attention (2 families x 1-4 layers x 2 head
counts x 2 head widths x 2 FFN ratios x tied or not: 128 architectures) is evaluated once at
the demo's brief budget, with the quality at every rung of multi-fidelity, and some of them
also fully distilled (`[full]`); the table is committed beside this file. Replays then run
each sampler with and without multi-fidelity for several seeds, in an in-memory Optuna study
whose trials are answered from the table (a repeated architecture costs nothing, as in a real
search; a trial stopped at a rung costs the steps it ran), and report the hypervolume reached
against trials and against training steps, and how well each rung ranks the full runs.

    python benchmarks/samplers.py evaluate [--workers 8] [--full 24]   # once; resumable
    python benchmarks/samplers.py replay [--seeds 5] [--trials 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.dominance import hypervolume, nondominated_ranks, reference_point, to_minimize  # noqa: E402
from nas.rank_check import correlations, pick_gap  # noqa: E402
from nas.spec import StudySpec, load_spec  # noqa: E402

SPEC = ROOT / "studies" / "demo-lm.toml"
OVERRIDES = ["space.gqa=false"]
PRECISION = ["resources.precision='fp32'"]  # the table was recorded in fp32
TABLE = Path(__file__).with_name("samplers_table.jsonl")
SAMPLER_NAMES = ("random", "tpe", "nsga2", "gp")

logger = logging.getLogger("samplers")


def key(arch: dict[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True)


def load(overrides: list[str] | None = None) -> StudySpec:
    import torch

    gpus = ["resources.gpus=1"] if torch.cuda.is_available() else []
    return load_spec(SPEC, [*OVERRIDES, *PRECISION, *gpus, *(overrides or [])])


def every_arch(spec: StudySpec) -> list[dict[str, Any]]:
    """Every architecture of the space, in Optuna's brute-force order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    archs: list[dict[str, Any]] = []
    study = optuna.create_study(sampler=optuna.samplers.BruteForceSampler(seed=0))
    study.optimize(lambda t: archs.append(spec.space.sample(t)) or 0.0, n_trials=100_000)
    return archs


def read_table(path: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Brief records and full records by architecture."""
    brief, full = {}, {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            (brief if row["kind"] == "brief" else full)[key(row["arch"])] = row
    return brief, full


# -- evaluate --------------------------------------------------------------------------------

_WORK: dict[str, Any] = {}


def _init_worker(overrides: list[str]) -> None:
    from nas.prepare import prepare_study
    from nas.search import trial_plan

    spec = load(overrides)
    data = prepare_study(spec)  # the finished cache, reused
    _WORK.update(spec=spec, data=data, plan=trial_plan(spec, data))


def _brief(arch: dict[str, Any]) -> dict[str, Any]:
    from nas.search.trial import run_trial

    spec, plan = _WORK["spec"], _WORK["plan"]
    out = run_trial(arch, plan)
    sizes = {m.name: out[m.name] for m in spec.task.metrics if m.kind == "size" and m.name in out}  # the runtime's where measured
    return {
        "kind": "brief",
        "arch": arch,
        "short": spec.task.describe(arch),
        **sizes,
        "rungs": out["rungs"],
        "seconds": round(out["train_seconds"], 2),
        "device": out["device"],
    }


def _full(arch: dict[str, Any]) -> dict[str, Any]:
    from nas.full import distill_arch

    spec = _WORK["spec"]
    run = distill_arch(spec, arch, _WORK["data"])
    result = run.result
    quality = {m.name: run.metrics[m.name] for m in spec.task.metrics if m.kind == "quality" and m.name in run.metrics}
    return {
        "kind": "full",
        "arch": arch,
        "short": spec.task.describe(arch),
        **quality,
        "steps": result.steps,
        "best_step": result.best_step,
        "seconds": round(run.seconds, 2),
        "device": str(run.device),
    }


def full_picks(spec: StudySpec, brief: dict[str, dict], k: int) -> list[dict[str, Any]]:
    """The brief front's architectures, then others evenly spaced over brief quality, `k` in all."""
    rows, front = list(brief.values()), brief_front(spec, brief)
    quality, direction = spec.objectives.metrics[0]
    ordered = sorted(rows, key=lambda r: final(r)[quality] * (1 if direction == "min" else -1))
    spaced = [ordered[int(round(x))] for x in np.linspace(0, len(ordered) - 1, num=k)]
    picks: dict[str, dict] = {}
    for r in [*front, *spaced, *ordered]:
        if len(picks) < k:
            picks.setdefault(key(r["arch"]), r)
    return [r["arch"] for r in picks.values()]


def brief_front(spec: StudySpec, brief: dict[str, dict]) -> list[dict[str, Any]]:
    """The records on the Pareto front of the table's brief runs."""
    metrics = spec.objectives.metrics
    rows = list(brief.values())
    points = to_minimize([[final(r)[m] for m, _ in metrics] for r in rows], [d for _, d in metrics])
    return [rows[i] for i in np.flatnonzero(nondominated_ranks(points) == 0)]


def final(row: dict[str, Any]) -> dict[str, Any]:
    """A brief record's metrics at the end of its budget."""
    return {**row["rungs"][-1], **{k: v for k, v in row.items() if k not in ("rungs", "arch")}}


def evaluate(args: argparse.Namespace) -> None:
    from nas.prepare import prepare_study

    spec = load(args.set)
    prepare_study(spec)  # teacher (trained on first use) and cache, once, before the workers
    archs = every_arch(spec)[: args.limit or None]
    brief, full = read_table(args.table)
    todo = [a for a in archs if key(a) not in brief]
    logger.info("%d architectures, %d evaluated, %d to go", len(archs), len(brief), len(todo))
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(args.set,)) as pool, args.table.open("a") as out:
        start = time.time()
        for i, row in enumerate(pool.imap_unordered(_brief, todo), 1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            brief[key(row["arch"])] = row
            logger.info("brief %d/%d %s %.1fs (%.0fs)", i, len(todo), row["short"], row["seconds"], time.time() - start)
        picks = [a for a in full_picks(spec, {k: brief[k] for k in map(key, archs)}, args.full) if key(a) not in full]
        for i, row in enumerate(pool.imap_unordered(_full, picks), 1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            logger.info("full %d/%d %s %.1fs (%.0fs)", i, len(picks), row["short"], row["seconds"], time.time() - start)


# -- replay ----------------------------------------------------------------------------------


def replay_one(spec: StudySpec, brief: dict[str, dict], sampler: str, mf: bool, seed: int, trials: int) -> list[tuple[int, int, float]]:
    """One search answered from the table: (distinct architectures, steps, hypervolume of the
    COMPLETE trials) after each new architecture. Without multi-fidelity it ends after `trials`
    architectures; with it, once it has spent as many steps as those would (or the table is
    exhausted), so that both are compared on the same compute too. Either way it proposes in
    the search's rounds (each of as many proposals as architectures are missing) and ends, as
    the search does, after `MAX_ROUNDS` rounds in a row that add no architecture: a sampler
    that keeps proposing what it has tried ends short, as it would in a real search."""
    import optuna

    from nas.search import MAX_ROUNDS
    from nas.search.sampling import make_sampler
    from nas.search.scheduler import RungBoard

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metrics = [m for m, _ in spec.objectives.metrics]
    modes = [d for _, d in spec.objectives.metrics]
    ref, _ = reference(spec, brief)
    study = optuna.create_study(
        directions=["minimize" if d == "min" else "maximize" for d in modes],
        sampler=make_sampler(sampler, seed=seed, trials=trials),
    )
    study.set_metric_names(metrics)
    board = RungBoard(metrics, modes, spec.multi_fidelity.reduction) if mf else None
    told: dict[str, tuple[optuna.trial.TrialState, list[float] | None]] = {}
    complete: list[list[float]] = []
    history: list[tuple[int, int, float]] = []
    steps = 0
    per_trial = next(iter(brief.values()))["rungs"][-1]["step"]
    idle, left, before = 0, 0, None  # rounds in a row that added nothing; proposals left in this round
    while True:
        if (len(told) >= trials and not mf) or steps >= trials * per_trial or len(told) == len(brief):
            break
        if left == 0:  # the round is over: a new one of as many proposals as architectures are missing
            idle = 0 if before is None or len(told) > before else idle + 1
            if idle >= MAX_ROUNDS:
                break
            left, before = max(1, trials - len(told)), len(told)
        left -= 1
        trial = study.ask()
        arch = spec.space.sample(trial)
        k = key(arch)
        if k in told:  # a repeat: the real search waits for its twin and tells the same
            state, values = told[k]
            study.tell(trial, values, state=state)
            continue
        row = brief[k]
        state, values = optuna.trial.TrialState.COMPLETE, [final(row)[m] for m in metrics]
        used = row["rungs"][-1]["step"]
        if board is not None:
            for r, rung in enumerate(row["rungs"][:-1]):
                if not board.goes_on(k, r, {**final(row), **rung}):
                    state, values, used = optuna.trial.TrialState.PRUNED, None, rung["step"]
                    # What the search stores on a stopped trial: its size, its rungs so far.
                    for name, value in {**final(row), **rung, "rungs": row["rungs"][: r + 1]}.items():
                        trial.set_user_attr(name, value)
                    break
        study.tell(trial, values, state=state)
        told[k] = (state, values)
        steps += used
        if values is not None:
            complete.append(values)
        hv = hypervolume(to_minimize(complete, modes), ref) if complete else 0.0
        history.append((len(told), steps, hv))
    return history


def _init_replay(overrides: list[str], table: Path, trials: int) -> None:
    import torch

    torch.set_num_threads(1)  # one replay per core
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    _WORK.update(spec=load(overrides), brief=read_table(table)[0], trials=trials)


def _replay_job(sampler: str, mf: bool, seed: int) -> list[tuple[int, int, float]]:
    start = time.time()
    history = replay_one(_WORK["spec"], _WORK["brief"], sampler, mf, seed, _WORK["trials"])
    logger.info("%s%s seed %d: %.0fs", sampler, " + multi-fidelity" if mf else "", seed, time.time() - start)
    return history


def reference(spec: StudySpec, brief: dict[str, dict]) -> tuple[np.ndarray, float]:
    """The hypervolume's reference point (10 % beyond the table's worst value of each
    objective) and the hypervolume of the whole table's front."""
    metrics = spec.objectives.metrics
    points = to_minimize([[final(r)[m] for m, _ in metrics] for r in brief.values()], [d for _, d in metrics])
    ref = reference_point(points)
    return ref, hypervolume(points, ref)


def at(history: list[tuple[int, int, float]], trials: int) -> float:
    """Hypervolume after `trials` architectures (the last value when the run stopped short)."""
    return next((hv for n, _, hv in history if n >= trials), history[-1][2])


def steps_to(history: list[tuple[int, int, float]], target: float) -> float:
    """Training steps spent when the hypervolume first reached `target` (inf: never)."""
    return next((s for _, s, hv in history if hv >= target - 1e-12), float("inf"))


def hv_at_steps(history: list[tuple[int, int, float]], budget: float) -> float:
    """Hypervolume once no more than `budget` training steps were spent."""
    return max((hv for _, s, hv in history if s <= budget), default=0.0)


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """Median [min-max]; "never" stands for an infinite value (a target not reached)."""

    def show(v: float) -> str:
        return fmt.format(v) if np.isfinite(v) else "never"

    return f"{show(statistics.median(values))} [{show(min(values))}-{show(max(values))}]"


def kendall(a: list[float], b: list[float]) -> tuple[str, str]:
    """Kendall's tau and Spearman's rho as `nas rank-check` computes them, formatted ("-": undefined)."""
    c = correlations(a, b, seed=0)
    return tuple("-" if c[k] is None else f"{c[k]:.2f}" for k in ("kendall_tau", "spearman"))


def fidelity_lines(spec: StudySpec, brief: dict[str, dict], full: dict[str, dict]) -> list[str]:
    """How each rung's quality, and the parameter count, rank the full runs."""
    quality, direction = spec.objectives.metrics[0]
    pairs = [(brief[k], f) for k, f in full.items() if k in brief]
    if len(pairs) < 3:
        return []
    ends = [f[quality] for _, f in pairs]
    lines = [f"| predictor of full {quality} ({len(pairs)} fully distilled, {pairs[0][1]['steps']} steps) | Kendall tau | Spearman |", "|---|---|---|"]
    for r, rung in enumerate(pairs[0][0]["rungs"]):
        tau, rho = kendall([b["rungs"][r][quality] for b, _ in pairs], ends)
        lines.append(f"| brief {quality} at step {rung['step']} | {tau} | {rho} |")
    sign = 1 if direction == "min" else -1  # fewer parameters predicting better quality
    tau, rho = kendall([sign * -b["non_embedding_params"] for b, _ in pairs], ends)
    lines.append(f"| non-embedding parameters (more is better) | {tau} | {rho} |")
    # The brief front's best-quality pick against the best full run among the distilled.
    rows = [
        {"trial": k, "brief": {quality: final(b)[quality]}, "full": {quality: full[k][quality] if k in full else None}}
        for k, b in brief.items()
    ]
    gap = pick_gap(rows, {key(r["arch"]) for r in brief_front(spec, brief)}, quality, direction)
    if gap is not None:
        lines.append("")
        lines.append(
            f"The brief front's best-{quality} pick, {brief[gap['trial']]['short']}, ends at {gap['full']:.1f} after "
            f"full distillation; the best full run among the distilled, {brief[gap['best_trial']]['short']}, at "
            f"{gap['best_full']:.1f} ({100 * gap['gap']:.1f} % worse)."
        )
    return lines


def replay(args: argparse.Namespace) -> None:
    spec = load(args.set)
    brief, full = read_table(args.table)
    archs = every_arch(spec)
    missing = [a for a in archs if key(a) not in brief]
    if missing:
        raise SystemExit(f"{args.table}: {len(missing)} of {len(archs)} architectures not evaluated; run `evaluate` first")
    _, best_hv = reference(spec, brief)
    args.samplers = ["random", *[s for s in args.samplers if s != "random"]]  # the baseline
    jobs = [(sampler, mf, seed) for sampler in args.samplers for mf in (False, True) for seed in range(args.seeds)]
    with mp.get_context("spawn").Pool(args.workers, _init_replay, (args.set, args.table, args.trials)) as pool:
        histories = pool.starmap(_replay_job, jobs)
    runs: dict[tuple[str, bool], list[list[tuple[int, int, float]]]] = {}
    for (sampler, mf, _), history in zip(jobs, histories):
        runs.setdefault((sampler, mf), []).append(history)
    marks = [m for m in (25, 50, args.trials) if m <= args.trials]
    base = statistics.median(at(h, args.trials) / best_hv for h in runs["random", False])
    rungs = "/".join(str(r["step"]) for r in next(iter(brief.values()))["rungs"])
    per_trial = next(iter(brief.values()))["rungs"][-1]["step"]
    budgets = [m * per_trial for m in marks]  # the steps of 25, 50, ... whole brief runs
    print(
        f"{len(brief)} architectures of {SPEC.name} ({', '.join(OVERRIDES)}), brief runs reporting at {rungs} steps; "
        f"searches of {args.trials} architectures, one at a time, {args.seeds} seeds; hypervolume (HV) as a share "
        f"of the whole table's front, median [min-max]\n"
    )
    head = [
        "sampler",
        "multi-fidelity",
        *[f"HV at {m} trials" for m in marks],
        *[f"HV at {b:,} steps" for b in budgets],
        f"steps for {args.trials} trials",
        f"steps to random's HV at {args.trials} ({base:.3f})",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (sampler, mf), hist in runs.items():
        cells = [sampler, "on" if mf else "off"]
        cells += [spread([at(h, m) / best_hv for h in hist]) for m in marks]
        cells += [spread([hv_at_steps(h, b) / best_hv for h in hist]) for b in budgets]
        cells.append(spread([float(next((s for n, s, _ in h if n >= args.trials), h[-1][1])) for h in hist], "{:,.0f}"))
        cells.append(spread([steps_to(h, base * best_hv) for h in hist], "{:,.0f}"))
        print("| " + " | ".join(cells) + " |")
    print()
    half = marks[-2] if len(marks) > 1 else marks[-1]
    for sampler in args.samplers:
        if sampler == "random":
            continue
        got = statistics.median(at(h, half) / best_hv for h in runs[sampler, False])
        print(f"- {sampler} after {half} trials: HV {got:.3f}, random search after {args.trials}: {base:.3f}")
    for sampler in args.samplers:
        # Per seed: the steps multi-fidelity needs to reach the HV the same seed reached without it.
        shares = [
            steps_to(mf, at(plain, args.trials)) / plain[-1][1]
            for plain, mf in zip(runs[sampler, False], runs[sampler, True])
        ]
        print(
            f"- {sampler} with multi-fidelity reaches the HV of {args.trials} trials without it in "
            f"{spread(shares, '{:.2f}')} of their steps (never: not within as many steps)"
        )
    print()
    for line in fidelity_lines(spec, brief, full):
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="evaluate every architecture once (resumable)")
    e.add_argument("--workers", type=int, default=1)
    e.add_argument("--full", type=int, default=24, help="architectures also fully distilled")
    e.add_argument("--limit", type=int, default=0, help="only the first N architectures (a smoke run)")
    r = sub.add_parser("replay", help="replay samplers against the table")
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--trials", type=int, default=100)
    r.add_argument("--samplers", nargs="+", default=list(SAMPLER_NAMES))
    r.add_argument("--workers", type=int, default=1, help="replays side by side")
    for q in (e, r):
        q.add_argument("--table", type=Path, default=TABLE)
        q.add_argument("--set", nargs="*", default=[], help="spec overrides, key=value")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    evaluate(args) if args.command == "evaluate" else replay(args)


if __name__ == "__main__":
    main()
