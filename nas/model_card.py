"""The model card (README.md) of an exported student: what it is, how it compares, how to redo
it. One writer for every task: the rows come from the task's metrics, the loss from the
registered terms' descriptions."""

from __future__ import annotations

import json
from typing import Any

from distill.cache import PRECISION, TEACHER_METRICS
from distill.tasks import Metric
from nas.pareto import provenance
from nas.spec import StudySpec
from nas.study._record import EVAL_SETS, RUNTIME_FILES, TEACHER_RUNTIME
from nas.texts import TEXTS


def _rows(metrics: list[Metric], *columns: dict[str, Any]) -> str:
    return "\n".join(f"| {m.label} | " + " | ".join(m.format(c.get(m.name)) for c in columns) + " |" for m in metrics)


def _eval_sets(task: Any, record: dict[str, Any]) -> str:
    """The quality on each extra evaluation set (`[[eval]]`), beside the teacher's there."""
    sets = record.get(EVAL_SETS) or {}
    if not sets:
        return ""
    teacher, brief = record.get("teacher_eval_sets") or {}, record.get("brief_eval_sets") or {}
    names = list(sets)
    quality = [m for m in task.metrics if m.kind == "quality" and not m.runtime]  # sets are scored in PyTorch
    head = " | ".join(f"{n}: student | {n}: after the brief run | {n}: teacher" for n in names)
    rows = "\n".join(
        f"| {m.label} | "
        + " | ".join(
            f"{m.format(sets[n].get(m.name))} | {m.format(brief.get(n, {}).get(m.name))} | {m.format(teacher.get(n, {}).get(m.name))}"
            for n in names
        )
        + " |"
        for m in quality
    )
    return f"""
## Quality on other data (the spec's extra evaluation sets)

| metric | {head} |
|---|{"---|" * 3 * len(names)}
{rows}
"""


def _on_policy(budget: Any) -> str:
    """The card's line on on-policy batches (GKD's lambda), when the run had them."""
    if not budget.on_policy:
        return ""
    return (
        f"- On-policy: {budget.on_policy:.0%} of the batches were the student's own samples, "
        "scored by the live teacher with the divergence terms alone (GKD)\n"
    )


def _rescore(task: Any, meta: dict[str, Any], record: dict[str, Any]) -> str:
    """How to recompute the held-out scores from the text saved in the export (tasks that generate)."""
    if not record.get("texts"):
        return ""
    command = task.rescore(f"{TEXTS}/references.eval.txt", f"{TEXTS}/student.eval.txt", meta.get("data", {}))
    if command is None:
        return ""
    return f"""
The held-out scores above, recomputed from this folder's `{TEXTS}/` (the inputs, the references,
the student's and the teacher's outputs, one line per item):

```bash
{command}
```
"""


def _runtime(task: Any, record: dict[str, Any]) -> str:
    """How to run the export's edge-runtime files (`distill.runtime`), where it has them."""
    files = record.get(RUNTIME_FILES) or {}
    if not files:
        return ""
    listed = "; ".join(f"{p}: " + ", ".join(f"`{f}`" for f in names) for p, names in files.items())
    suffix = "_int8.onnx" if "int8" in files else ".onnx"
    return f"""
## In ONNX Runtime

The student as ONNX graphs ({listed}). int8: the weights of its matrix products and embeddings
quantized to int8 per output channel, activations quantized at run time (ONNX Runtime's dynamic
quantization). The rows marked ONNX Runtime below were measured with these files on ONNX
Runtime's CPU execution provider, the teacher's with its own graphs made the same way; text is
generated greedily there. Run it with onnxruntime, numpy and the tokenizer alone:

```python
{task.card.runtime_usage.format(path="path/to/this/folder", file=suffix)}
```
"""


def _teacher_size_note(meta: dict[str, Any]) -> str:
    if meta.get(PRECISION, "fp32") != "bf16":
        return ""
    return "\nThe teacher's latency and memory were measured with its weights in bfloat16 (as the study ran it), the student's with fp32 weights.\n"


def _precision(run: str, teacher: str) -> str:
    """The card's line on what the run and the teacher's cached outputs computed in."""
    how = {
        "bf16": "bf16 (bfloat16 autocast over fp32 weights; losses and optimizer state in fp32); the scores above were "
        "measured in it too: run the model under `torch.autocast(device_type, dtype=torch.bfloat16)` to reproduce them",
        "fp32": "fp32",
    }
    return f"{how[run]}; the teacher's outputs were computed in {teacher}; the exported weights are fp32"


def model_card(spec: StudySpec, meta: dict[str, Any], number: int, arch: dict[str, Any], record: dict[str, Any]) -> str:
    task, budget = spec.task, spec.full
    teacher = {**meta[TEACHER_METRICS], **(record.get(TEACHER_RUNTIME) or {})}
    student, brief = record["metrics"], record["brief"]
    shown = [m for m in task.metrics if not m.runtime or m.name in student]  # the runtime's where it was measured
    ratios = {m.name: student[m.name] / teacher[m.name] for m in shown if teacher.get(m.name) and m.name in student}
    size = "\n".join(
        f"| {m.label} | {m.format(student.get(m.name))} | {m.format(teacher.get(m.name))} | "
        f"{f'{ratios[m.name]:.3f}' if m.name in ratios else '-'} |"
        for m in shown if m.kind == "size"
    )  # fmt: skip
    quality = _rows([m for m in shown if m.kind == "quality"], student, brief, teacher)
    extra = _eval_sets(task, record)
    settings = meta.get("data", {})
    if settings.get("mix"):  # each part's source is on its own line below
        settings = {k: v for k, v in settings.items() if k != "mix" and (k not in task.eval_keys or k == task.eval_limit)}
    data = ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    items = task.card.items
    teachers = record.get("teachers") or [meta["teacher_name"]]
    own = task.card.tokenizer.replace("the teacher's", "the first teacher's") if len(teachers) > 1 else task.card.tokenizer
    tokenizer = f" and uses {own}" if own else ""
    teacher_name = " + ".join(teachers)
    best = (
        f"exported weights are those of step {record['best_step']}"
        + (" (stopped early)" if record["stopped_early"] else "")
        if record["best_step"] is not None
        else "exported weights are those of the last step"
    )
    return f"""---
library_name: {task.card.library_name}
pipeline_tag: {task.card.pipeline_tag}
tags:
- distillation
- distill-nas
---

# {spec.name} student, trial {number}

A {task.describe(arch)} student of `{teacher_name}`, found by the distill-nas architecture search of
study `{spec.name}` (trial {number}) and distilled from the teacher for {record["steps"]} steps
(batches of {budget.batch_size} {items}). It has {student["params"] / teacher["params"]:.1%} of the teacher's
parameters{tokenizer}. Load it with:

```python
{task.card.usage.format(path="path/to/this/folder")}
```
{_runtime(task, record)}
## Size, measured on {record["device"]}

| | student | teacher | student / teacher |
|---|---|---|---|
{size}
{_teacher_size_note(meta)}
## Quality on held-out data ({meta["eval_items"]} {items} never trained on)

| metric | student | student after the brief search run | teacher |
|---|---|---|---|
{quality}
{extra}
## Architecture

```json
{json.dumps(arch, indent=2)}
```

## Training

- Teacher: `{teacher_name}`
- Data: {data}; split into train / validation / held-out with the study's seed
{"".join(f"- {line}" + chr(10) for line in provenance({**meta, **record}))}- Loss: {spec.loss.describe()}
- Precision: {_precision(record.get(PRECISION, "fp32"), meta.get(PRECISION, "fp32"))}
{_on_policy(budget)}- Optimizer: AdamW, lr {budget.lr}, warmup {budget.warmup:.0%} then cosine, batch {budget.batch_size} {items} ({budget.grad_accum} micro-batches), weight decay {budget.weight_decay}, gradient clipping {budget.grad_clip}
- Validation every {budget.eval_every} steps on {meta["valid_items"]} validation {items}; {best}

## Reproduce

```bash
{record["command"] or f"nas distill {spec.path.name} --trial {number}"}
```
{_rescore(task, meta, record)}"""
