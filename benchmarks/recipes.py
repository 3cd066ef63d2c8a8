"""Distillation methods side by side: one fixed student, the same budget and data order, 3 seeds.

On the causal-LM demo (studies/demo-lm.toml: perplexity, KL to the teacher, top-1 agreement)
and the translation demo (studies/demo-mt.toml: BLEU, chrF), each method trains the same
student architecture from random weights for the same steps on the same batches (the data
order is the seed's), and is scored on the study's held-out split:

- CE only (no teacher), forward KL, reverse KL, generalized JSD (beta 0.5), skew KL
  (alpha 0.1), self-evolution KD, each divergence with the demo's cross-entropy weight 0.5;
- intermediate layers + KL: forward KL, CE and the hidden-state MSE of mapped layers;
- two teachers: forward KL and CE against the demo teacher and a second, smaller teacher
  trained on the same text with the same tokenizer, weighted equally.

Prints one table (mean and spread over the seeds) and writes it, with every run, to --out.

    python benchmarks/recipes.py [--tasks causal-lm translation] [--seeds 3] [--lm-steps 300] [--mt-steps 1200]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from distill import LossConfig, make_loss, study_teachers, train
from distill.tasks.base import scores_and_text
from nas.prepare import prepare_other_teachers, prepare_study
from nas.spec import StudySpec, load_spec

ROOT = Path(__file__).resolve().parents[1]

DEMOS = {
    "causal-lm": {
        "spec": "studies/demo-lm.toml",
        "student": {
            "family": "llama", "layers": 2, "heads": 4, "kv_heads": 4, "head_dim": 32, "ffn_ratio": 2.0,
            "tie_embeddings": True, "init": "random", "layer_pick": "even",
        },
        "second_teacher": {"layers": 3, "hidden": 128, "heads": 4},
        "metrics": ("perplexity", "kl", "top1_agreement"),
    },
    "translation": {
        "spec": "studies/demo-mt.toml",
        "student": {
            "family": "marian", "encoder_layers": 2, "decoder_layers": 1, "heads": 4, "head_dim": 32,
            "ffn_ratio": 2.0, "share_embeddings": True, "init": "random", "layer_pick": "even",
        },
        "second_teacher": {"layers": 2, "hidden": 96, "heads": 4},
        "metrics": ("bleu", "chrf"),
    },
}  # fmt: skip

# name -> (term weights, two teachers)
METHODS = {
    "CE only": ({"ce": 1.0}, False),
    "forward KL": ({"forward_kl": 1.0, "ce": 0.5}, False),
    "reverse KL": ({"reverse_kl": 1.0, "ce": 0.5}, False),
    "generalized JSD": ({"jsd": 1.0, "ce": 0.5}, False),
    "skew KL": ({"skew_kl": 1.0, "ce": 0.5}, False),
    "intermediate + KL": ({"forward_kl": 1.0, "ce": 0.5, "hidden": 1.0}, False),
    "two teachers": ({"forward_kl": 1.0, "ce": 0.5}, True),
    "self-evolution KD": ({"self_evolution_kd": 1.0, "ce": 0.5}, False),
}


def studies(task: str) -> tuple[StudySpec, object, tuple]:
    """The demo's spec with a second teacher (trained on first use like the first), and both
    teachers' outputs cached with everything the methods need."""
    demo = DEMOS[task]
    spec = load_spec(ROOT / demo["spec"], ["resources.precision='fp32'"])  # the table was recorded in fp32
    first = spec.teacher
    train = dataclasses.replace(first.train, **demo["second_teacher"])
    second = dataclasses.replace(first, model=first.model.rstrip("/") + "-2", train=train)
    weights = {**spec.loss.weights, "hidden": 1.0}  # the cache holds the hidden states too
    spec = dataclasses.replace(
        spec, other_teachers=(second,), loss=dataclasses.replace(spec.loss, weights=weights, teacher_weights=(1.0, 1.0))
    )
    data = prepare_study(spec)
    # the second teacher is smaller: its next-token outputs alone (its hidden states have another shape)
    plain = dataclasses.replace(spec.loss, weights=dict(spec.loss.weights) | {"hidden": 0.0})
    return spec, data, prepare_other_teachers(dataclasses.replace(spec, loss=plain), data)


def run(task: str, spec: StudySpec, data, others, method: str, seed: int, steps: int) -> dict:
    weights, two = METHODS[method]
    arch = DEMOS[task]["student"]
    loss = LossConfig(weights, spec.loss.params, teacher_weights=(1.0, 1.0) if two else ())
    budget = dataclasses.replace(spec.brief, steps=steps)
    cpu = torch.device("cpu")
    torch.manual_seed(seed)
    student = spec.task.build_student(arch, data, cpu)
    teachers = study_teachers(spec.task, data, loss, cpu, others if two else ())
    loss_fn = make_loss(spec.task, student, data, loss, teachers, cpu, arch=arch)
    start = time.perf_counter()
    train(student, budget, loss_fn, spec.task.lengths(data, "train"), seed=seed)
    seconds = time.perf_counter() - start
    quality, _ = scores_and_text(spec.task.evaluate(student, data, "eval", cpu))
    return {"task": task, "method": method, "seed": seed, "steps": steps, "seconds": seconds, **quality}


def table(rows: list[dict], tasks: list[str]) -> str:
    """Markdown: a row per method, `mean ± spread` (sample standard deviation) per task metric."""
    columns = [(t, m) for t in tasks for m in DEMOS[t]["metrics"]]
    head = "| method | " + " | ".join(f"{'LM' if t == 'causal-lm' else 'MT'} {m}" for t, m in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for method in METHODS:
        cells = []
        for t, m in columns:
            values = [r[m] for r in rows if r["task"] == t and r["method"] == method]
            if not values:
                cells.append("-")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 3 if m in ("kl", "top1_agreement") else 2
            cells.append(f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(DEMOS), choices=list(DEMOS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lm-steps", type=int, default=300, help="steps of each causal-LM run (the demo's brief budget)")
    p.add_argument("--mt-steps", type=int, default=1200, help="steps of each translation run (the demo's brief budget)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "recipes_runs.jsonl")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["task"], r["method"], r["seed"], r["steps"]) for r in rows}
    for task in args.tasks:
        spec, data, others = studies(task)
        steps = args.lm_steps if task == "causal-lm" else args.mt_steps
        for method in args.methods:
            for seed in range(args.seeds):
                if (task, method, seed, steps) in done:
                    continue  # a run of an earlier invocation: kept
                row = run(task, spec, data, others, method, seed, steps)
                print(json.dumps(row), flush=True)
                rows.append(row)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    steps = {t: (args.lm_steps if t == "causal-lm" else args.mt_steps) for t in args.tasks}
    rows = [r for r in rows if r["task"] in args.tasks and r["steps"] == steps[r["task"]] and r["seed"] < args.seeds]
    print(table(rows, args.tasks))


if __name__ == "__main__":
    main()
