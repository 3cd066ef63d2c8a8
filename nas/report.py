"""The study report: one self-contained plotly HTML file, drawn with Optuna's visualizations."""

from __future__ import annotations

import html
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from distill.tasks import format_metric
from nas.dominance import reference_point, to_minimize
from nas.pareto import described, eval_set_names, front_rows, provenance
from nas.rank_check import PROXY
from nas.recipe import describe_recipe
from nas.study import StudyRecord, TrialRecord, distinct_complete, task_of, trial_counts
from nas.study._record import ARCH, ARCH_SHORT, EVAL_SETS, LOSS_CURVE, RECIPE, TRAIN_STEPS

HOVER_HIDDEN = (LOSS_CURVE, ARCH)


def _plot_study(study: optuna.Study) -> optuna.Study:
    """An in-memory copy with one trial per architecture and hover-friendly user attributes."""
    copy = optuna.create_study(directions=study.directions)
    copy.set_metric_names(study.metric_names or [f"objective_{i}" for i in range(len(study.directions))])
    for t in distinct_complete(study):
        attrs = {k: v for k, v in t.user_attrs.items() if k not in HOVER_HIDDEN}
        attrs["trial"] = t.number
        copy.add_trial(
            optuna.trial.create_trial(
                params=t.params,
                distributions=t.distributions,
                values=t.values,
                user_attrs=attrs,
                state=TrialState.COMPLETE,
                constraints=t.constraints or None,  # infeasible trials are drawn apart, off the front
            )
        )
    return copy


def hypervolume_reference(study: optuna.Study) -> list[float]:
    """The hypervolume's reference point of the report and the service: 10% beyond the worst
    value of each objective among the study's architectures (feasible or not), in the study's
    own directions."""
    directions = ["min" if d == optuna.study.StudyDirection.MINIMIZE else "max" for d in study.directions]
    ref = reference_point(to_minimize([t.values for t in distinct_complete(study)], directions))
    return to_minimize(ref, directions)[0].tolist()  # negating twice: back to the study's signs


def _curves(study: optuna.Study) -> go.Figure:
    fig = go.Figure()
    front = {r["trial"] for r in front_rows(study)}
    for t in distinct_complete(study):
        curve = TrialRecord(t).loss_curve
        if not curve:
            continue
        steps = [round(i * (t.user_attrs.get(TRAIN_STEPS, len(curve)) / len(curve))) for i in range(len(curve))]
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=curve,
                mode="lines",
                name=f"#{t.number} {TrialRecord(t).arch_short}",
                line={"width": 3 if t.number in front else 1},
            )
        )
    fig.update_layout(
        title="Brief-distillation loss per trial (front trials thicker)", xaxis_title="step", yaxis_title="loss"
    )
    return fig


def _brief_vs_full(study: optuna.Study, rows: list[dict]) -> go.Figure | None:
    """Front points that were fully distilled: where the brief run put them, where they ended."""
    done = [r for r in rows if r["full"]]
    if not done:
        return None
    quality, size = list(done[0]["objectives"])[:2]
    fig = go.Figure()
    for r in done:
        x = r["objectives"][size]
        brief, full = r["objectives"][quality], r["full"]["metrics"][quality]
        fig.add_trace(
            go.Scatter(
                x=[x, x],
                y=[brief, full],
                mode="lines+markers+text",
                text=["brief", "full"],
                textposition="middle right",
                name=f"#{r['trial']} {r[ARCH_SHORT]}",
                hovertemplate=f"{quality}: %{{y:.4g}}<br>{size}: %{{x:,}}<br>{html.escape(r['full']['export'])}<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"Fully distilled students: brief-run {quality} against full {quality}",
        xaxis_title=size,
        yaxis_title=quality,
    )
    fig.update_xaxes(type="log")  # sizes span orders of magnitude; one student still gets a readable axis
    return fig


def _rank_check(study: optuna.Study) -> list[go.Figure]:
    """`nas rank-check`'s measurement: brief against full quality, one point per trial, per
    quality objective, with the rank correlations (and the parameter-count proxy's) in the title."""
    result = StudyRecord(study).rank_check
    if not result:
        return []
    figures = []
    for m in [n for n in (study.metric_names or []) if n in result["metrics"]]:
        c = result["metrics"][m]
        rows = [r for r in result["trials"] if r["brief"].get(m) is not None and r["full"].get(m) is not None]
        fig = go.Figure(
            go.Scatter(
                x=[r["brief"][m] for r in rows],
                y=[r["full"][m] for r in rows],
                mode="markers+text",
                text=[f"#{r['trial']}" for r in rows],
                textposition="top center",
                customdata=[[r[ARCH_SHORT], r[PROXY]] for r in rows],
                hovertemplate="%{customdata[0]}<br>brief %{x:.4g}, full %{y:.4g}<br>%{customdata[1]:,} non-embedding parameters<extra></extra>",
            )
        )
        b, p = c["brief"], c["proxy"]
        fig.update_layout(
            title=(
                f"Brief against full {m} ({len(rows)} trials): Kendall tau {_num(b['kendall_tau'])}, "
                f"Spearman {_num(b['spearman'])}; non-embedding parameters as the predictor: "
                f"tau {_num(p['kendall_tau'])}, Spearman {_num(p['spearman'])}"
            ),
            xaxis_title=f"brief-run {m}",
            yaxis_title=f"full-run {m}",
        )
        figures.append(fig)
    return figures


def _num(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _by_recipe(study: optuna.Study) -> go.Figure:
    """Every architecture's first two objectives, one colour (and legend entry) per recipe."""
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    quality, size = names[0], names[1] if len(names) > 1 else names[0]
    groups: dict[str, list] = {}
    for t in distinct_complete(study):
        groups.setdefault(describe_recipe(TrialRecord(t).recipe) or "the spec's loss", []).append(t)
    fig = go.Figure()
    for recipe, trials in sorted(groups.items()):
        fig.add_trace(
            go.Scatter(
                x=[t.values[names.index(size)] for t in trials],
                y=[t.values[0] for t in trials],
                mode="markers",
                name=recipe,
                text=[f"#{t.number} {TrialRecord(t).arch_short}" for t in trials],
                hovertemplate=f"%{{text}}<br>{quality}: %{{y:.4g}}<br>{size}: %{{x:,}}<extra>{html.escape(recipe)}</extra>",
            )
        )
    fig.update_layout(title=f"{quality} against {size}, coloured by recipe", xaxis_title=size, yaxis_title=quality)
    fig.update_xaxes(type="log")
    return fig


def write_report(study: optuna.Study, out: Path, color_by: str = "front") -> Path:
    """Pareto front (all trials, front highlighted, hover with architecture and metrics),
    hypervolume over trials, loss curves and the front as a table. `color_by = "recipe"`
    draws the trials coloured by their recipe (`[space.recipe]`) first."""
    from optuna.visualization import plot_hypervolume_history, plot_pareto_front

    plot = _plot_study(study)
    if not plot.trials:
        raise ValueError(f"study {study.study_name}: no complete trial to report")
    names = plot.metric_names
    figures = []
    if len(names) in (2, 3):
        figures.append(plot_pareto_front(plot, target_names=names))
    else:
        for j in range(1, len(names)):
            figures.append(
                plot_pareto_front(
                    plot, targets=lambda t, j=j: (t.values[0], t.values[j]), target_names=[names[0], names[j]]
                )
            )
    figures[0].update_layout(title=f"Pareto front of {study.study_name} ({len(plot.trials)} architectures)")
    if color_by == "recipe":
        figures.insert(0, _by_recipe(study))
    if len(names) >= 2:
        figures.append(plot_hypervolume_history(plot, hypervolume_reference(study)))
    rows = front_rows(study)
    moved = _brief_vs_full(study, rows)
    if moved is not None:
        figures.append(moved)
    figures.extend(_rank_check(study))
    figures.append(_curves(study))
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_height="560px") for i, fig in enumerate(figures)
    ]
    task = task_of(study)
    quality = names[0]
    sets = eval_set_names(study)
    what = "architecture | recipe" if any(r[RECIPE] for r in rows) else "architecture"
    columns = ["trial", what, *names, *[f"{s} {quality}" for s in sets], f"full {quality}", *[f"full {s} {quality}" for s in sets], "export"]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in columns)
    body = "".join(
        "<tr>"
        + f"<td>{r['trial']}</td><td>{html.escape(described(r))}</td>"
        + "".join(f"<td>{format_metric(task, n, v)}</td>" for n, v in r["objectives"].items())
        + "".join(f"<td>{format_metric(task, quality, r[EVAL_SETS].get(s, {}).get(quality))}</td>" for s in sets)
        + (
            f"<td>{format_metric(task, quality, r['full']['metrics'].get(quality))}</td>"
            + "".join(f"<td>{format_metric(task, quality, (r['full'].get(EVAL_SETS) or {}).get(s, {}).get(quality))}</td>" for s in sets)
            + f"<td>{html.escape(r['full']['export'])}</td>"
            if r["full"]
            else "<td>-</td>" * (len(sets) + 2)
        )
        + "</tr>"
        for r in rows
    )
    counts = ", ".join(f"{n} {k}" for k, n in trial_counts(study).items())
    teacher = StudyRecord(study).teacher_metrics
    teacher_line = ", ".join(f"{k} {format_metric(task, k, v)}" for k, v in teacher.items())
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>distill-nas: {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>Teacher: {html.escape(str(StudyRecord(study).teacher or "?"))} ({html.escape(teacher_line)})</p>
{"".join(f"<p>{html.escape(line)}</p>" for line in provenance(StudyRecord(study).provenance))}<p>Trials: {html.escape(counts)}. Infeasible trials (beyond a bound of [constraints]) are drawn grey and never on the front.</p>
<h2>Pareto front</h2><table><tr>{head}</tr>{body}</table>
{"".join(parts)}
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    return out
