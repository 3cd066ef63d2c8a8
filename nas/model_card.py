"""The model card (README.md) of an exported student: what it is, how it compares, how to redo it."""

from __future__ import annotations

import json
from typing import Any

from distill import DistillConfig
from nas.spec import StudySpec
from search_spaces import DecoderArch

ROWS = [
    ("perplexity", "perplexity (lower is better)", "{:.2f}"),
    ("kl", "KL to the teacher, nats/token (lower is better)", "{:.4f}"),
    ("top1_agreement", "top-1 agreement with the teacher", "{:.3f}"),
]
SIZE_ROWS = [
    ("params", "parameters", "{:,.0f}"),
    ("non_embedding_params", "non-embedding parameters", "{:,.0f}"),
    ("latency_ms", "latency, ms/token (batch 1)", "{:.4f}"),
    ("peak_memory_mb", "peak memory, MiB (batch 1)", "{:.2f}"),
]


def _cell(fmt: str, value: Any) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def model_card(
    spec: StudySpec, meta: dict[str, Any], number: int, arch: DecoderArch, cfg: DistillConfig, record: dict[str, Any]
) -> str:
    teacher = meta["teacher_metrics"]
    student, brief = record["metrics"], record["brief"]
    size = "\n".join(
        f"| {label} | {_cell(fmt, student.get(k))} | {_cell(fmt, teacher.get(k))} | "
        f"{_cell('{:.3f}', student[k] / teacher[k]) if teacher.get(k) else '-'} |"
        for k, label, fmt in SIZE_ROWS
    )
    quality = "\n".join(
        f"| {label} | {_cell(fmt, student.get(k))} | {_cell(fmt, brief.get(k))} | {_cell(fmt, teacher.get(k))} |"
        for k, label, fmt in ROWS
    )
    data = meta.get("data", {})
    source = data.get("source", "?") + (f" ({', '.join(data['files'])})" if data.get("files") else "")
    tokens = record["steps"] * cfg.batch_size * meta["block_length"]
    ratio = student["params"] / teacher["params"]
    teacher_name = meta["teacher"]
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- distillation
- distill-nas
---

# {spec.name} student, trial {number}

A {arch.short()} student of `{teacher_name}`, found by the distill-nas architecture search of
study `{spec.name}` (trial {number}) and distilled from the teacher for {record["steps"]} steps
({tokens:,} tokens). It has {ratio:.1%} of the teacher's parameters and uses the teacher's
tokenizer. Load it with plain transformers:

```python
from transformers import pipeline
generate = pipeline("text-generation", model="path/to/this/folder")
print(generate("The", max_new_tokens=20)[0]["generated_text"])
```

## Size, measured on {record["device"]}

| | student | teacher | student / teacher |
|---|---|---|---|
{size}

## Quality on held-out data ({meta["eval_blocks"]} blocks of {meta["block_length"]} tokens never trained on)

| metric | student | student after the brief search run | teacher |
|---|---|---|---|
{quality}

## Architecture

```json
{json.dumps(arch.to_dict(), indent=2)}
```

## Training

- Teacher: `{teacher_name}`
- Data: {source}, text column `{data.get("text_column", "?")}`, blocks of {meta["block_length"]} tokens; documents split into train / validation / held-out
- Loss: {cfg.kd_weight} x KL(teacher || student) at temperature {cfg.temperature} over the teacher's top {meta["top_k"]} tokens and one bucket for the rest (scaled by T²) + {cfg.ce_weight} x cross-entropy
- Optimizer: AdamW, lr {cfg.lr}, warmup {cfg.warmup:.0%} then cosine, batch {cfg.batch_size} blocks ({cfg.grad_accum} micro-batches), weight decay {cfg.weight_decay}, gradient clipping {cfg.grad_clip}
- Validation every {cfg.eval_every} steps on {meta.get("valid_blocks", "?")} validation blocks; exported weights are those of step {record["best_step"]}{" (stopped early)" if record["stopped_early"] else ""}

## Reproduce

```bash
{record["command"] or f"nas distill {spec.path.name} --trial {number}"}
```
"""
