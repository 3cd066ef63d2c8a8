"""GPU readiness: what the CPU-built tests cannot show, on a machine with a CUDA GPU.

1. A brief trial in bf16 on CUDA (`[resources] gpus = 1`, `precision = "auto"`): the causal-LM
   demo's teacher (trained here on first use) and a 4-layer 512-wide student; its tokens/s and
   model FLOPs utilization (6 x parameters x tokens per second, against the GPU's measured bf16
   matrix-product rate and, where the GPU is known, its datasheet peak).
2. Two trials packed on one GPU (`gpus = 0.5`, two at a time): both on CUDA, their runs
   overlapping in time.
3. With two GPUs or more: a 2-worker full run (`nas distill --workers 2`, NCCL), its tokens/s.

    python benchmarks/gpu_check.py [--steps 200]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
"""dense bf16 datasheet peaks (SXM parts), by a name the device's name contains"""
STUDENT = {
    "family": "llama", "layers": 4, "heads": 8, "kv_heads": 8, "head_dim": 64, "ffn_ratio": 4.0,
    "tie_embeddings": True, "init": "random", "layer_pick": "even",
}  # fmt: skip


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - start) / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this check runs on a machine with one")
    from nas.prepare import prepare_study
    from nas.search import run_search, trial_plan
    from nas.search.trial import run_trial
    from nas.spec import load_spec
    from nas.study import distinct_complete

    name = torch.cuda.get_device_name(0)
    measured = matmul_tflops()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(f"{name}, {torch.cuda.device_count()} GPU(s); bf16 matrix products: {measured:.0f} TFLOP/s measured"
          + (f", {peak:.0f} datasheet" if peak else ""))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo-lm.toml"  # the demo's spec in a folder of its own: its teacher, caches and studies go there
        shutil.copy(ROOT / "studies" / "demo-lm.toml", demo)
        common = [f"brief.steps={args.steps}", "brief.batch_size=32", "resources.cpus=2"]
        spec = load_spec(demo, [*common, "study.name=one", "resources.gpus=1"])
        data = prepare_study(spec)
        result = run_trial(STUDENT, trial_plan(spec, data))
        tokens = result["train_steps"] * 32 * spec.data.block_length
        rate = tokens / result["phase_seconds"]["train"]
        flops = 6 * result["params"] * rate / 1e12
        print(f"brief trial: {result['device']}, {result['precision']}, {rate:,.0f} tokens/s, {flops:.1f} TFLOP/s of the model: "
              f"MFU {flops / measured:.1%} of measured" + (f", {flops / peak:.1%} of datasheet" if peak else ""))  # fmt: skip
        packed_args = [*common, "study.name=packed", "resources.gpus=0.5", "study.trials=2", "study.concurrency=2"]
        packed = load_spec(demo, packed_args)
        study = run_search(packed)
        done = distinct_complete(study)
        spans = sorted((t.datetime_start, t.datetime_complete) for t in done)
        overlap = len(spans) == 2 and spans[1][0] < spans[0][1]
        devices = {t.user_attrs["device"] for t in done}
        print(f"two trials at gpus = 0.5: {len(done)} complete on {devices}; ran side by side: {overlap}")
        if not done:
            raise SystemExit("no packed trial completed: see the study's fail_reason")
        if torch.cuda.device_count() >= 2:
            number = done[0].number
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "nas", "distill", str(demo), "--trial", str(number), "--workers", "2",
                 *packed_args, "full.steps=200", "full.batch_size=64", "resources.gpus=1"],
                check=True,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            print(f"2-worker full run (NCCL): 200 steps x 64 blocks in {seconds:.0f} s, "
                  f"{200 * 64 * packed.data.block_length / seconds:,.0f} tokens/s with start-up")  # fmt: skip
        else:
            print("one GPU: the 2-worker full run needs two")


if __name__ == "__main__":
    main()
