"""The top-k cache's price: the same student distilled from the teacher's top k (k = 8, 32,
128, with the tail bucket) against the live teacher's full distribution, at equal steps.

On the causal-LM demo (studies/demo-lm.toml: its GPT-2 teacher, trained here on first use, a
4,096-token vocabulary) a fixed llama L2 d128 student trains for the same steps on the same
batches (the seed's order) with the demo's loss (forward KL at temperature 2 and CE 0.5), its
teacher term read from the cache at each k or computed from the live teacher's full logits
(`teacher_outputs = "live"`, `full_vocabulary = true`). Every student is scored on the same
held-out blocks against the same teacher outputs (the k = 128 cache's): perplexity, and KL to
the teacher at temperature 1 over its top 128 tokens and the tail bucket. Beside each: the
bytes the cache keeps per training token.

With `--shape qwen`, the same at Qwen2.5-0.5B's shape (`benchmarks/scale.py`'s random-weight
teacher, a 151,936-row vocabulary) with a qwen2 L2 d256 student, 32 training blocks, batches
of 4 blocks and fewer steps (`--steps 12`).

Prints, per k: bytes per token, mean perplexity and KL, and the paired difference from the
live full distribution (mean and 95 % interval over the seeds).

    python benchmarks/topk.py [--shape demo|qwen] [--steps 300] [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
from pathlib import Path

import torch
from paired import fmt, interval

from distill import make_loss, study_teachers, train
from distill.precision import computing_in, resolve
from distill.tasks.base import scores_and_text
from nas.prepare import prepare_study
from nas.spec import StudySpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
KS = (8, 32, 128)
STUDENTS = {
    "demo": {"family": "llama", "layers": 2, "heads": 4, "kv_heads": 4, "head_dim": 32, "ffn_ratio": 2.0},
    "qwen": {"family": "qwen2", "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 64, "ffn_ratio": 2.0},
}


def spec_of(shape: str, work: Path, extra: list[str]) -> StudySpec:
    if shape == "demo":
        return load_spec(ROOT / "studies" / "demo-lm.toml", extra)
    from scale import SPEC, make_teacher

    teacher = work / "teacher"
    if not (teacher / "model.safetensors").exists():
        make_teacher(teacher)
    path = work / "topk.toml"
    path.write_text(SPEC.format(name="topk", trials=1, teacher=teacher, block=128, blocks=32, steps=1, half=1))
    return load_spec(path, ["space.init=['random']", "brief.batch_size=4", *extra])


def cache_bytes(data, task) -> float:
    """Bytes of the teacher's cached training outputs per training token."""
    names = [n for n in data.meta["outputs"].get("train", {})]
    size = sum((data.path / f"train_{n}.npy").stat().st_size for n in names)
    return size / max(1, int(task.lengths(data, "train").sum()))


def run(spec: StudySpec, data, reference, arch: dict, seed: int, steps: int) -> dict:
    task, cpu = spec.task, torch.device("cpu")
    budget = dataclasses.replace(spec.brief, steps=steps)
    with computing_in(resolve(spec.resources.precision, cpu)):
        torch.manual_seed(seed)
        student = task.build_student(arch, data, cpu)
        loss_fn = make_loss(task, student, data, spec.loss, study_teachers(task, data, spec.loss, cpu), cpu, arch=arch)
        train(student, budget, loss_fn, task.lengths(data, "train"), seed=seed)
        quality, _ = scores_and_text(task.evaluate(student, reference, "eval", cpu))
    return quality


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("demo", "qwen"), default="demo")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    arch = {**STUDENTS[args.shape], "tie_embeddings": True, "init": "random", "layer_pick": "even"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = {f"top {k}": [f"loss.top_k={k}"] for k in KS}
        settings["live, full distribution"] = ["loss.teacher_outputs='live'", "loss.full_vocabulary=true"]
        specs = {name: spec_of(args.shape, work, extra) for name, extra in settings.items()}
        datas = {name: prepare_study(spec) for name, spec in specs.items()}
        reference = datas["top 128"]  # every student is scored against the same held-out teacher outputs
        rows = {name: [run(specs[name], datas[name], reference, arch, seed, args.steps) for seed in range(args.seeds)] for name in specs}
        task = specs["top 8"].task
        print(f"{args.shape}: {task.describe(arch)} student, {args.steps} steps x {specs['top 8'].brief.batch_size} blocks, "
              f"{args.seeds} seeds; held-out perplexity, KL to the teacher over its top 128 and the tail")  # fmt: skip
        print()
        print("| teacher outputs | cache bytes / training token | perplexity | KL | perplexity - live (95 % CI) | KL - live (95 % CI) |")
        print("|---|---|---|---|---|---|")
        live = rows["live, full distribution"]
        for name, runs in rows.items():
            size = "-" if name.startswith("live") else f"{cache_bytes(datas[name], task):,.0f}"
            ppl, kl = statistics.mean(r["perplexity"] for r in runs), statistics.mean(r["kl"] for r in runs)
            d_ppl = interval([r["perplexity"] - ref["perplexity"] for r, ref in zip(runs, live)])
            d_kl = interval([r["kl"] - ref["kl"] for r, ref in zip(runs, live)])
            same = name.startswith("live")
            print(f"| {name} | {size} | {ppl:.2f} | {kl:.4f} | {'-' if same else fmt(*d_ppl)} | {'-' if same else fmt(*d_kl, 4)} |")


if __name__ == "__main__":
    main()
