"""Mixed precision: fp32 against bf16, training speed and quality, side by side in one run.

On the causal-LM demo (studies/demo-lm.toml: its GPT-2 teacher, trained here on first use on
Python's documentation topics), a 2-layer GPT-2 student of each width (64-wide heads) runs the
study's brief trial (`nas.search.trial.run_trial`, what every search trial runs) once per
precision and seed: the same initialization, data order and budget; the teacher's outputs
cached in the run's precision. Steps/s is the training loop's; quality is held-out perplexity
(and KL to the teacher). Per width: each precision's steps/s (median over seeds), the speed-up,
and the paired bf16 - fp32 difference in perplexity, its mean and 95 % interval (Student's t
over the seeds).

    python benchmarks/precision.py [--steps 60] [--seeds 3] [--widths 128 256 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import torch
from paired import fmt, interval

from distill.precision import native_bf16
from nas.prepare import prepare_study
from nas.search import trial_plan
from nas.search.trial import run_trial
from nas.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "studies" / "demo-lm.toml"
PRECISIONS = ("fp32", "bf16")
def arch(width: int, layers: int) -> dict:
    heads = width // 64
    return {
        "family": "gpt2", "layers": layers, "heads": heads, "kv_heads": heads, "head_dim": 64,
        "ffn_ratio": 4.0, "tie_embeddings": True, "init": "random", "layer_pick": "even",
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    def spec(precision: str, seed: int = 0):
        return load_spec(SPEC, [f"resources.precision='{precision}'", f"resources.cpus={args.threads}", f"brief.steps={args.steps}", f"study.seed={seed}"])

    data = {p: prepare_study(spec(p)) for p in PRECISIONS}  # a cache per precision: the teacher's outputs in it
    runs: dict[tuple[int, str], list[dict]] = {}
    for seed in range(args.seeds):
        for width in args.widths:
            for precision in PRECISIONS:  # interleaved: the machine's drift falls on both alike
                result = run_trial(arch(width, args.layers), trial_plan(spec(precision, seed), data[precision]))
                assert result["precision"] == precision, result["precision"]
                runs.setdefault((width, precision), []).append(result)
                print(
                    f"width {width} {precision} seed {seed}: {result['train_steps'] / result['train_seconds']:.2f} steps/s, "
                    f"perplexity {result['perplexity']:.2f}, kl {result['kl']:.4f}",
                    flush=True,
                )
    cpu = "computes bf16 natively" if native_bf16(torch.device("cpu")) else "has no native bf16"
    print()
    print(
        f"gpt2 L{args.layers} students (64-wide heads), {args.steps} steps x 16 blocks x 128 tokens of the demo-lm brief run, "
        f"{args.seeds} seeds, {args.threads} threads (a CPU that {cpu})"
    )
    print()
    print("| width | params | fp32 steps/s | bf16 steps/s | bf16 speed-up | fp32 perplexity | bf16 perplexity | bf16 - fp32 perplexity (95 % CI) | bf16 - fp32 KL (95 % CI) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for width in args.widths:
        fp32, bf16 = runs[(width, "fp32")], runs[(width, "bf16")]
        rate = {p: statistics.median(r["train_steps"] / r["train_seconds"] for r in runs[(width, p)]) for p in PRECISIONS}
        ppl = {p: statistics.mean(r["perplexity"] for r in runs[(width, p)]) for p in PRECISIONS}
        d_ppl, h_ppl = interval([b["perplexity"] - f["perplexity"] for f, b in zip(fp32, bf16)])
        d_kl, h_kl = interval([b["kl"] - f["kl"] for f, b in zip(fp32, bf16)])
        print(
            f"| {width} | {fp32[0]['params']:,} | {rate['fp32']:.2f} | {rate['bf16']:.2f} | {rate['bf16'] / rate['fp32']:.2f}x | "
            f"{ppl['fp32']:.2f} | {ppl['bf16']:.2f} | {fmt(d_ppl, h_ppl)} | {fmt(d_kl, h_kl, 4)} |"
        )


if __name__ == "__main__":
    main()
