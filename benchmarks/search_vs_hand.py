"""Search against hand design: at three size budgets, the front's pick and the designs people
use without a search, as large as the budget allows, fully distilled with the same `[full]` budget.

For a study that has been searched (`nas search`), at each budget (a share of the teacher's
non-embedding parameters) the pick is the front's best at the study's first quality
objective among the trials of at most that size; the hand designs are built as people build
them (the teacher's FFN ratio kept), as large as the budget allows:

- every other teacher layer at the teacher's width (DistilBERT);
- the teacher's first layers at its width;
- the teacher's depth at a reduced width, channels, heads and neurons ranked by importance
  (Minitron);
- the pick's shape from random weights (what teacher initialization buys).

Each is fully distilled with the spec's `[full]` budget for every seed (the student's
initialization and data order; the data and its splits are the study's), on the study's
held-out split and its `[[eval]]` sets. Every run is kept in a jsonl (a rerun skips the runs
it holds), and the table gives per budget and design the mean quality and its paired
difference from the pick with a 95 % interval (Student's t over the seeds), beside the
search's own cost (its trials' wall time):

    python benchmarks/search_vs_hand.py studies/demo.toml [--seeds 3] [--budgets 0.125 0.1875 0.25] [--shard 0/2]
    python benchmarks/search_vs_hand.py studies/demo-lm.toml --table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DESIGNS = ("search's pick", "every other layer", "first layers", "teacher's depth, narrower", "pick's shape, random init")


def teacher_shape(config: Any) -> dict[str, Any]:
    """Family, layers, heads, head width, FFN ratio and tied embeddings of a BERT, GPT-2 or
    Llama-like teacher config."""
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return {
        "family": config.model_type, "layers": layers, "heads": heads, "head_dim": hidden // heads,
        "ffn_ratio": inner / hidden, "tie_embeddings": bool(getattr(config, "tie_word_embeddings", True)),
    }  # fmt: skip


def candidates(design: str, pick: dict[str, Any], teacher: dict[str, Any]) -> list[dict[str, Any]]:
    """Every architecture of `design`'s kind, as variations of the pick's arch dict."""
    ratios = np.arange(0.25, teacher["ffn_ratio"] + 1e-9, 0.25)
    # sliced from the teacher, so of its family, with its embeddings tied as the teacher's are
    base = {**pick, "family": teacher["family"], "init": "teacher", "head_dim": teacher["head_dim"]}
    if "tie_embeddings" in pick:
        base["tie_embeddings"] = teacher["tie_embeddings"]
    out = []
    if design in ("every other layer", "first layers"):
        pick_layers = "every_other" if design == "every other layer" else "first"
        for layers in range(1, teacher["layers"] + 1):
            for ratio in ratios:
                out.append({**base, "layers": layers, "heads": teacher["heads"], "ffn_ratio": float(ratio), "layer_pick": pick_layers})
    elif design == "teacher's depth, narrower":
        for heads in range(1, teacher["heads"] + 1):
            for ratio in ratios:
                out.append({**base, "layers": teacher["layers"], "heads": heads, "ffn_ratio": float(ratio), "layer_pick": "even"})
    for arch in out:
        if "kv_heads" in arch:  # decoders: full attention where a grouping would not divide
            arch["kv_heads"] = arch["heads"] if arch.get("family") == "gpt2" or arch["heads"] % pick["kv_heads"] else pick["kv_heads"]
    return out


def hand_design(design: str, pick: dict[str, Any], size: int, teacher: dict[str, Any], count) -> dict[str, Any] | None:
    """`design` within `size` non-embedding parameters, as people build it: the teacher's FFN
    ratio kept, as many layers (DistilBERT, first layers) or as wide (Minitron) as fit; where
    not even one layer (one head) fits with it, that one with the widest FFN that fits. None
    where nothing fits."""
    if design == "search's pick":
        return dict(pick)
    if design == "pick's shape, random init":  # None where the pick is random-initialized itself
        return {**pick, "init": "random"} if pick.get("init", "random") != "random" else None
    fits = [a for a in candidates(design, pick, teacher) if count(a) <= size]
    if not fits:
        return None
    full = [a for a in fits if math.isclose(a["ffn_ratio"], teacher["ffn_ratio"])]
    grow = "layers" if design != "teacher's depth, narrower" else "heads"
    if full:
        return max(full, key=lambda a: a[grow])
    return max(fits, key=lambda a: (a[grow], a["ffn_ratio"]))


def run(args: argparse.Namespace) -> None:
    import optuna

    from nas.full import distill_arch
    from nas.prepare import prepare_eval_sets, prepare_other_teachers, prepare_study
    from nas.spec import load_spec
    from nas.study import front_trials, is_feasible

    spec = load_spec(Path(args.spec), args.overrides)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    task = spec.task
    metric, direction = spec.objectives.metrics[0]
    sign = 1.0 if direction == "min" else -1.0
    data = prepare_study(spec)
    others = prepare_other_teachers(spec, data)
    evals = prepare_eval_sets(spec)
    teacher = teacher_shape(data.teacher_config())
    teacher_size = data.teacher_metrics["non_embedding_params"]

    def count(arch: dict[str, Any]) -> int:
        return task.param_counts(arch, data)["non_embedding_params"]

    out = Path(args.out)
    rows = [r for r in _rows(out) if r["steps"] == spec.full.steps]  # another budget's runs are not these
    done = {(r["spec"], r["budget"], r["design"], r["seed"]) for r in rows}
    made = {(r["spec"], r["arch"], r["seed"]): r for r in rows}  # a design that is the same student at two budgets runs once
    front = [t for t in front_trials(study) if is_feasible(t) and metric in t.user_attrs]
    shard, shards = (int(v) for v in args.shard.split("/"))
    job = -1
    for share in args.budgets:
        limit = share * teacher_size
        within = [t for t in front if t.user_attrs["non_embedding_params"] <= limit]
        if not within:
            logging.warning("budget %.4g: no front trial within %s parameters", share, f"{limit:,.0f}")
            continue
        pick = min(within, key=lambda t: sign * t.user_attrs[metric])
        arch = pick.user_attrs["arch"]
        for design in DESIGNS:
            chosen = hand_design(design, arch, int(limit), teacher, count)
            if chosen is None:
                why = "the pick is random-initialized" if design == DESIGNS[-1] else f"none within {limit:,.0f} parameters"
                logging.warning("budget %.4g: no %s: %s", share, design, why)
                continue
            for seed in range(args.seeds):
                key = (args.spec, share, design, seed)
                job += 1
                if key in done or job % shards != shard:
                    continue
                same = made.get((args.spec, task.describe(chosen), seed))
                if same is not None:
                    row = {**same, "budget": share, "design": design, "trial": pick.number}
                    with out.open("a") as f:
                        f.write(json.dumps(row, default=float) + "\n")
                    continue
                seeded = dataclasses.replace(spec, study=dataclasses.replace(spec.study, seed=seed))
                logging.info("budget %.4g, %s, seed %d: %s", share, design, seed, task.describe(chosen))
                start = time.perf_counter()
                result = distill_arch(seeded, chosen, data, evals=evals, others=others)
                row = {
                    "spec": args.spec, "task": task.name, "budget": share, "design": design, "seed": seed,
                    "trial": pick.number, "arch": task.describe(chosen), "non_embedding_params": count(chosen),
                    "metrics": {m: result.metrics.get(m) for m in (metric, *[q for q in result.metrics if q != metric])},
                    "eval_sets": result.eval_sets, "steps": spec.full.steps, "seconds": time.perf_counter() - start,
                }  # fmt: skip
                with out.open("a") as f:
                    f.write(json.dumps(row, default=float) + "\n")
                made[(args.spec, row["arch"], seed)] = row
    print(table(_rows(out), args.spec, spec.full.steps, metric, direction, search_seconds(study), len(study.trials)))


def search_seconds(study: Any) -> float:
    """The search's wall time: from its first trial's start to its last trial's end."""
    times = [(t.datetime_start, t.datetime_complete) for t in study.trials if t.datetime_start and t.datetime_complete]
    return (max(c for _, c in times) - min(s for s, _ in times)).total_seconds() if times else math.nan


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def interval(diffs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student's t interval (nan below 2 values)."""
    from scipy import stats

    if len(diffs) < 2:
        return (float(np.mean(diffs)) if diffs else math.nan, math.nan)
    return float(np.mean(diffs)), float(stats.t.ppf(0.975, len(diffs) - 1) * stats.sem(diffs))


def table(
    rows: list[dict[str, Any]], spec: str, steps: int, metric: str, direction: str, search_s: float, trials: int
) -> str:
    """Markdown: per budget and design, its size, mean quality over the seeds and the paired
    difference from the pick (positive: better than the pick)."""
    sign = 1.0 if direction == "min" else -1.0
    rows = [r for r in rows if r["spec"] == spec and r["steps"] == steps]
    lines = [
        f"{spec}: full runs of {steps} steps; the search's own cost: {trials} trials "
        f"(repeats and never-trained ones included) in {search_s / 60:.1f} min of wall time",
        "",
        f"| budget | design | architecture | non-embedding params | {metric} | vs the pick (better: +) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for share in sorted({r["budget"] for r in rows}):
        here = [r for r in rows if r["budget"] == share]
        pick = {r["seed"]: r["metrics"][metric] for r in here if r["design"] == DESIGNS[0]}
        for design in DESIGNS:
            runs = [r for r in here if r["design"] == design]
            if not runs:
                continue
            mean = float(np.mean([r["metrics"][metric] for r in runs]))
            paired = [sign * (pick[r["seed"]] - r["metrics"][metric]) for r in runs if r["seed"] in pick]
            diff = "" if design == DESIGNS[0] else "{:+.4g} ± {:.2g}".format(*interval(paired))
            lines.append(
                f"| {share:g} | {design} | {runs[0]['arch']} | {runs[0]['non_embedding_params']:,} | {mean:.4g} | {diff} | {len(runs)} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", help="a study spec whose search has run")
    p.add_argument("overrides", nargs="*", help="spec overrides, e.g. full.steps=400")
    p.add_argument(
        "--budgets", type=float, nargs="+", default=[0.125, 0.1875, 0.25], help="shares of the teacher's non-embedding parameters"
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "search_vs_hand_runs.jsonl"))
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th run from the i-th (several processes, one jsonl)")
    p.add_argument("--table", action="store_true", help="print the table of the runs kept, run nothing")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.table:
        import optuna

        from nas.spec import load_spec

        spec = load_spec(Path(args.spec), args.overrides)
        study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
        metric, direction = spec.objectives.metrics[0]
        print(table(_rows(Path(args.out)), args.spec, spec.full.steps, metric, direction, search_seconds(study), len(study.trials)))
        return
    run(args)


if __name__ == "__main__":
    main()
