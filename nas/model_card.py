"""The model card (README.md) of an exported student: what it is, how it compares, how to redo it."""

from __future__ import annotations

import json
from typing import Any

from distill import DistillConfig
from nas.spec import StudySpec

ROWS = {
    "causal-lm": [
        ("perplexity", "perplexity (lower is better)", "{:.2f}"),
        ("kl", "KL to the teacher, nats/token (lower is better)", "{:.4f}"),
        ("top1_agreement", "top-1 agreement with the teacher", "{:.3f}"),
    ],
    "embedding": [
        ("cosine", "mean cosine to the teacher's embedding of the same sentence", "{:.4f}"),
        ("spearman", "Spearman correlation of pairwise similarities with the teacher's", "{:.4f}"),
        ("retrieval", "overlap of top-10 nearest neighbours with the teacher's", "{:.3f}"),
    ],
}
SIZE_ROWS = {
    "causal-lm": [
        ("params", "parameters", "{:,.0f}"),
        ("non_embedding_params", "non-embedding parameters", "{:,.0f}"),
        ("latency_ms", "latency, ms/token (batch 1)", "{:.4f}"),
        ("peak_memory_mb", "peak memory, MiB (batch 1)", "{:.2f}"),
    ],
    "embedding": [
        ("params", "parameters", "{:,.0f}"),
        ("non_embedding_params", "non-embedding parameters", "{:,.0f}"),
        ("latency_ms", "latency, ms/sentence (batch 1)", "{:.3f}"),
        ("latency_ms_b32", "latency, ms/sentence (batch 32)", "{:.3f}"),
        ("peak_memory_mb", "peak memory, MiB (batch 1)", "{:.2f}"),
    ],
}
USAGE = {
    "causal-lm": """```python
from transformers import pipeline
generate = pipeline("text-generation", model="path/to/this/folder")
print(generate("The", max_new_tokens=20)[0]["generated_text"])
```""",
    "embedding": """```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("path/to/this/folder")
embeddings = model.encode(["A sentence to embed.", "Another one."])
```""",
}


def _cell(fmt: str, value: Any) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def model_card(
    spec: StudySpec, meta: dict[str, Any], number: int, arch: Any, cfg: DistillConfig, record: dict[str, Any]
) -> str:
    task = spec.study.task
    teacher = meta["teacher_metrics"]
    student, brief = record["metrics"], record["brief"]
    size = "\n".join(
        f"| {label} | {_cell(fmt, student.get(k))} | {_cell(fmt, teacher.get(k))} | "
        f"{_cell('{:.3f}', student[k] / teacher[k]) if teacher.get(k) else '-'} |"
        for k, label, fmt in SIZE_ROWS[task]
    )
    quality = "\n".join(
        f"| {label} | {_cell(fmt, student.get(k))} | {_cell(fmt, brief.get(k))} | {_cell(fmt, teacher.get(k))} |"
        for k, label, fmt in ROWS[task]
    )
    data = meta.get("data", {})
    source = data.get("source", "?") + (f" ({', '.join(data['files'])})" if data.get("files") else "")
    unit = "paragraphs" if task == "embedding" else "blocks"
    held_out = meta.get("eval_items", meta.get("eval_blocks"))
    loss = (
        f"{cfg.cosine_weight} x (1 - cosine) + {cfg.mse_weight} x MSE between student and teacher sentence embeddings"
        + (f" + {cfg.hidden_weight} x last hidden states (projected)" if cfg.hidden_weight else "")
        + (f" + {cfg.relation_weight} x MiniLM attention and value relations" if cfg.relation_weight else "")
        if task == "embedding"
        else f"{cfg.kd_weight} x KL(teacher || student) at temperature {cfg.temperature} over the teacher's top "
        f"{meta['top_k']} tokens and one bucket for the rest (scaled by T²) + {cfg.ce_weight} x cross-entropy"
    )
    ratio = student["params"] / teacher["params"]
    teacher_name = meta["teacher"]
    return f"""---
library_name: {"sentence-transformers" if task == "embedding" else "transformers"}
pipeline_tag: {"sentence-similarity" if task == "embedding" else "text-generation"}
tags:
- distillation
- distill-nas
---

# {spec.name} student, trial {number}

A {arch.short()} student of `{teacher_name}`, found by the distill-nas architecture search of
study `{spec.name}` (trial {number}) and distilled from the teacher for {record["steps"]} steps
(batches of {cfg.batch_size} {unit} of up to {meta["block_length"]} tokens). It has {ratio:.1%} of the teacher's
parameters and uses the teacher's tokenizer. Load it with:

{USAGE[task]}

## Size, measured on {record["device"]}

| | student | teacher | student / teacher |
|---|---|---|---|
{size}

## Quality on held-out data ({held_out} {unit} never trained on)

| metric | student | student after the brief search run | teacher |
|---|---|---|---|
{quality}

## Architecture

```json
{json.dumps(arch.to_dict(), indent=2)}
```

## Training

- Teacher: `{teacher_name}`
- Data: {source}, text column `{data.get("text_column", "?")}`, {unit} of up to {meta["block_length"]} tokens; documents split into train / validation / held-out
- Loss: {loss}
- Optimizer: AdamW, lr {cfg.lr}, warmup {cfg.warmup:.0%} then cosine, batch {cfg.batch_size} {unit} ({cfg.grad_accum} micro-batches), weight decay {cfg.weight_decay}, gradient clipping {cfg.grad_clip}
- Validation every {cfg.eval_every} steps on {meta.get("valid_items", meta.get("valid_blocks", "?"))} validation {unit}; exported weights are those of step {record["best_step"]}{" (stopped early)" if record["stopped_early"] else ""}

## Reproduce

```bash
{record["command"] or f"nas distill {spec.path.name} --trial {number}"}
```
"""
