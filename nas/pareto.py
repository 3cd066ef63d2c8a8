"""The Pareto front as rows: a table for people, JSON for machines. Columns and number formats
come from the metrics the study's task declares."""

from __future__ import annotations

import json
from typing import Any

import optuna

from distill.cache import DATA_INFO, SCORING, TEACHER_METRICS
from distill.runtime import metric_name
from distill.tasks import format_metric
from nas.recipe import describe_recipe
from nas.study import StudyRecord, TrialRecord, distilled_records, front_trials, task_of
from nas.study._record import ARCH, ARCH_SHORT, EVAL_SETS, EVAL_SETS_INFO, RECIPE


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per front trial, smallest first by the first size objective."""
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    task = task_of(study)
    distilled = distilled_records(study)
    rows = []
    for t in front_trials(study):
        full, r = distilled.get(str(t.number)), TrialRecord(t)
        rows.append(
            {
                "trial": t.number,
                ARCH: r.arch,
                ARCH_SHORT: r.arch_short,
                RECIPE: r.recipe,
                "objectives": dict(zip(names, t.values)),
                "metrics": r.metrics(task),
                EVAL_SETS: r.eval_sets,
                "full": {k: full.get(k) for k in ("metrics", "export", EVAL_SETS)} if full else None,
            }
        )
    rows.sort(key=lambda r: list(r["objectives"].values())[::-1])
    return rows


def described(row: dict[str, Any]) -> str:
    """A front row's architecture in short, and its recipe where the search sampled one."""
    recipe = describe_recipe(row.get(RECIPE))
    return f"{row[ARCH_SHORT]} | {recipe}" if recipe else row[ARCH_SHORT]


def eval_set_names(study: optuna.Study) -> list[str]:
    """The study's extra evaluation sets (`[[eval]]`), as its teacher was scored on them."""
    return list(StudyRecord(study).teacher_eval_sets)


def front_json(study: optuna.Study) -> str:
    record = StudyRecord(study)
    return json.dumps(
        {
            "study": study.study_name,
            "task": task_of(study).name,
            "directions": [d.name.lower() for d in study.directions],
            "teacher": record.teacher,
            TEACHER_METRICS: record.teacher_metrics or None,
            "teacher_eval_sets": record.teacher_eval_sets,
            "front": front_rows(study),
        },
        indent=2,
    )


def front_table(study: optuna.Study) -> str:
    """A plain-text table: trial, architecture in short, every objective, the edge runtime's
    latency and first objective where trials were measured there (`[runtime]`), and the full
    run's score of the first objective for students that were fully distilled."""
    rows = front_rows(study)
    if not rows:
        return f"study {study.study_name}: no complete trial yet"
    task = task_of(study)
    names = list(rows[0]["objectives"])
    added = runtime_columns(task, names, rows)
    for r in rows:
        r["objectives"] |= {n: r["metrics"].get(n) for n in added}
    arrows = {n: ("↓" if d == optuna.study.StudyDirection.MINIMIZE else "↑") for n, d in zip(names, study.directions)}
    arrows |= dict.fromkeys(added, "")  # measured, not an objective
    names += added
    quality = names[0]
    full = any(r["full"] for r in rows)
    sets = eval_set_names(study)
    what = "architecture | recipe" if any(r[RECIPE] for r in rows) else "architecture"
    header = (
        ["trial", what, *[f"{n} {arrows[n]}".rstrip() for n in names]]
        + [f"{s} {quality}" for s in sets]
        + ([f"full {quality}", *[f"full {s} {quality}" for s in sets]] if full else [])
    )
    body = []
    for r in rows:
        line = [str(r["trial"]), described(r), *[format_metric(task, n, r["objectives"][n]) for n in names]]
        line += [format_metric(task, quality, r[EVAL_SETS].get(s, {}).get(quality)) for s in sets]
        if full:  # fully distilled front points: the full scores next to the brief ones, on every set
            done = r["full"] or {}
            line.append(format_metric(task, quality, done["metrics"].get(quality)) if done else "-")
            line += [format_metric(task, quality, (done.get(EVAL_SETS) or {}).get(s, {}).get(quality)) if done else "-" for s in sets]
        body.append(line)
    teacher = StudyRecord(study).teacher_metrics
    if teacher:
        on_sets = StudyRecord(study).teacher_eval_sets
        body.append(
            ["teacher", "", *[format_metric(task, n, teacher[n]) if n in teacher else "-" for n in names]]
            + [format_metric(task, quality, on_sets.get(s, {}).get(quality)) for s in sets]
            + ([format_metric(task, quality, teacher.get(quality)), *[format_metric(task, quality, on_sets.get(s, {}).get(quality)) for s in sets]] if full else [])
        )
    lines = text_table(header, body)
    return f"Pareto front of {study.study_name}: {len(rows)} architectures\n" + "\n".join(lines)


def runtime_columns(task: Any, objectives: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The runtime metrics the front table adds where its trials have them: at each precision,
    the runtime's first speed metric (its latency) and its measure of the first objective."""
    wanted = []
    for p in dict.fromkeys(m.runtime for m in task.metrics if m.runtime):
        speed = next(m.name for m in task.metrics if m.runtime == p and m.kind == "size")
        wanted += [speed, metric_name(p, objectives[0])]
    return [n for n in wanted if n not in objectives and any(n in r["metrics"] for r in rows)]


def provenance(attrs: dict[str, Any]) -> list[str]:
    """What reading the data found and how quality was computed (a study's or a cache's
    `data_info` and `scoring`, and the `data_info` of each extra evaluation set), one plain
    line each, for reports and model cards."""
    lines = [
        f"{what}: " + ", ".join(f"{n:,} {k}" for k, n in counts.items())
        for what, counts in (attrs.get(DATA_INFO) or {}).items()
    ]
    lines += [
        f"eval set {name}, {what}: " + ", ".join(f"{n:,} {k}" for k, n in counts.items())
        for name, info in (attrs.get(EVAL_SETS_INFO) or {}).items()
        for what, counts in info.items()
    ]
    scoring = attrs.get(SCORING) or {}
    if scoring:
        lines.append("scoring: " + "; ".join(f"{metric} {signature}" for metric, signature in scoring.items()))
    return lines


def text_table(header: list[str], body: list[list[str]], rule: bool = True) -> list[str]:
    """Aligned columns: the first two (trial, architecture) to the left, numbers to the right;
    a rule of dashes under the header unless `rule` is False."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in [header, *body]
    ]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
