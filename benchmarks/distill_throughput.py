"""Throughput of the full-distillation loop against plain training of the same student.

Side by side in one run, on the same student, batches and machine:
  - distill-nas loop: KD from the cached teacher top-k + CE (what `nas distill` runs)
  - plain PyTorch loop: CE on the ground truth only, no teacher (the floor)
  - online KD: the teacher runs forward on every batch (what the cache avoids)

    python benchmarks/distill_throughput.py [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill import Budget, DataConfig, LossConfig, TeacherConfig, make_loss, prepare, study_teachers, train
from distill.losses import topk_kd_loss
from distill.tasks import get_task
from distill.teachers import train_tokenizer
from search_spaces import DecoderArch, build_model


def plain_loop(student, blocks, steps, batch, lr, teacher=None, k=32, temperature=2.0):
    """A textbook loop: AdamW, CE (and KD from a live teacher when given)."""
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, len(blocks), (batch,), generator=gen).numpy()
        tokens = torch.from_numpy(blocks[idx].astype(np.int64))
        logits = student(input_ids=tokens).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        if teacher is not None:
            with torch.no_grad():
                top = torch.log_softmax(teacher(input_ids=tokens).logits[:, :-1] / temperature, -1).topk(k, -1)
            loss = 0.5 * loss + topk_kd_loss(logits, top.values, top.indices, temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from pydoc_data.topics import topics

        tok = train_tokenizer([topics[k] for k in sorted(topics)], 4096)
        teacher_arch = DecoderArch("gpt2", 4, 4, 4, 48, 4.0, True)  # the demo teacher's shape
        from transformers import PretrainedConfig

        vocab = PretrainedConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        build_model(teacher_arch, vocab, 128).save_pretrained(root / "teacher")
        tok.save_pretrained(root / "teacher")
        task, cpu = get_task("causal-lm"), torch.device("cpu")
        loss = LossConfig({"forward_kl": 1.0, "ce": 0.5}, {"temperature": 2.0, "top_k": 32})
        data = prepare(
            task,
            TeacherConfig(model=str(root / "teacher")),
            DataConfig(block_length=128),
            loss,
            base_dir=root,
            cache_root=root / "cache",
        )
        blocks, lengths = data.array("train_blocks"), task.lengths(data, "train")
        teacher = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
        arch = DecoderArch("gpt2", 2, 4, 4, 32, 4.0, False)  # a front student of the demo
        budget = Budget(steps=args.steps, batch_size=args.batch, lr=1e-3)
        tokens = args.steps * args.batch * 128

        def ours(m):
            loss_fn = make_loss(task, m, data, loss, study_teachers(task, data, loss, cpu), cpu)
            train(m, budget, loss_fn, lengths)

        def student():
            torch.manual_seed(0)
            return build_model(arch, data.teacher_config(), 128)

        runs = {
            "distill-nas loop (cached teacher top-k + CE)": ours,
            "plain PyTorch loop (CE only, no teacher)": lambda m: plain_loop(m, blocks, args.steps, args.batch, 1e-3),
            "online KD (teacher forward every step)": lambda m: plain_loop(
                m, blocks, args.steps, args.batch, 1e-3, teacher=teacher
            ),
        }
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):  # interleaved, best of the repeats
            for name, run in runs.items():
                model = student()
                start = time.perf_counter()
                run(model)
                best[name] = max(best[name], tokens / (time.perf_counter() - start))
    floor = best["plain PyTorch loop (CE only, no teacher)"]
    print(f"student {arch.short()}, {args.steps} steps x {args.batch} blocks x 128 tokens, {args.threads} threads")
    print(f"{'loop':<48} {'tokens/s':>10} {'vs plain':>9}")
    for name, rate in best.items():
        print(f"{name:<48} {rate:>10,.0f} {rate / floor:>9.2f}")


if __name__ == "__main__":
    main()
