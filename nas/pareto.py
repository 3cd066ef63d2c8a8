"""The Pareto front as rows: a table for people, JSON for machines."""

from __future__ import annotations

import json
from typing import Any

import optuna

from nas.search import DISTILLED, front_trials

FORMATS = {
    "perplexity": "{:.2f}",
    "kl": "{:.4f}",
    "top1_agreement": "{:.3f}",
    "cosine": "{:.4f}",
    "spearman": "{:.4f}",
    "retrieval": "{:.3f}",
    "latency_ms_b32": "{:.3f}",
    "params": "{:,.0f}",
    "non_embedding_params": "{:,.0f}",
    "latency_ms": "{:.4f}",
    "peak_memory_mb": "{:.2f}",
}


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per front trial, smallest first by the first size objective."""
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    distilled = study.user_attrs.get(DISTILLED, {})
    rows = []
    for t in front_trials(study):
        full = distilled.get(str(t.number))
        rows.append(
            {
                "trial": t.number,
                "arch": t.user_attrs.get("arch"),
                "arch_short": t.user_attrs.get("arch_short", ""),
                "objectives": dict(zip(names, t.values)),
                "metrics": {k: t.user_attrs[k] for k in FORMATS if k in t.user_attrs},
                "full": {"metrics": full["metrics"], "export": full["export"]} if full else None,
            }
        )
    rows.sort(key=lambda r: list(r["objectives"].values())[::-1])
    return rows


def front_json(study: optuna.Study) -> str:
    return json.dumps(
        {
            "study": study.study_name,
            "directions": [d.name.lower() for d in study.directions],
            "teacher_metrics": study.user_attrs.get("teacher_metrics"),
            "front": front_rows(study),
        },
        indent=2,
    )


def front_table(study: optuna.Study) -> str:
    """A plain-text table: trial, architecture in short, every objective."""
    rows = front_rows(study)
    if not rows:
        return f"study {study.study_name}: no complete trial yet"
    names = list(rows[0]["objectives"])
    arrows = {n: ("↓" if d == optuna.study.StudyDirection.MINIMIZE else "↑") for n, d in zip(names, study.directions)}
    header = ["trial", "architecture", *[f"{n} {arrows[n]}" for n in names]]
    body = [
        [str(r["trial"]), r["arch_short"], *[FORMATS.get(n, "{}").format(r["objectives"][n]) for n in names]]
        for r in rows
    ]
    teacher = study.user_attrs.get("teacher_metrics") or {}
    if teacher:
        body.append(["teacher", "", *[FORMATS.get(n, "{}").format(teacher[n]) if n in teacher else "-" for n in names]])
    quality = names[0]
    if any(r["full"] for r in rows) and quality in FORMATS:
        # Fully distilled front points: the full score next to the brief one.
        header.append(f"full {quality}")
        for line, r in zip(body, rows):
            line.append(FORMATS[quality].format(r["full"]["metrics"][quality]) if r["full"] else "-")
        body[-1].append(FORMATS[quality].format(teacher[quality]) if len(body) > len(rows) else "-")
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"Pareto front of {study.study_name}: {len(rows)} architectures\n" + "\n".join(lines)
