"""What a study costs at a real LLM's shape: a teacher of Qwen2.5-0.5B's configuration.

The teacher is Qwen2 at Qwen2.5-0.5B's shape (24 layers, 896 wide, 14 query and 2 key-value
heads of 64, a 4,864-wide FFN, a 151,936-row vocabulary, tied embeddings: 494M parameters)
with random weights, saved in bf16 as the hub's copy is (no model hub here). Its tokenizer is a
byte-level BPE trained on Python's documentation: the ids it gives are a small part of the
vocabulary, but the logits, the cache's top k and the students' output layers are as wide as
the real model's, which is what costs.

At two data sizes (N and 2N training blocks of 128 tokens), each stage in its own process,
as a user runs them:
 1. `nas search` of teacher-sliced qwen2 students (24-step brief runs, one at a time), in two
    parts: the driver caching the teacher's outputs, then the trials;
 2. `nas distill` of the search's first trial from the cached outputs (24 steps) and its export.

Prints, per stage: wall time, tokens/s, the peak resident memory of the process (the driver's,
and the trial workers' as they record it; the driver's also less what importing its libraries
alone takes, which no teacher changes), the driver's memory once the trials run, the
cache's bytes per token, bytes written to disk, and per trial where its time went.

    python benchmarks/scale.py [--blocks 48] [--trials 3] [--steps 24] [--keep DIR]
    python benchmarks/scale.py --teacher 1.5b --cache-only   # the driver's memory at Qwen2.5-1.5B's shape
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QWEN25_05B = {
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}  # fmt: skip
"""Qwen2.5-0.5B's config.json, the parts that give its shape"""
QWEN25_15B = QWEN25_05B | {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12}
"""Qwen2.5-1.5B's (`--teacher 1.5b --cache-only`: the driver's memory at a larger teacher)"""
SHAPES = {"0.5b": QWEN25_05B, "1.5b": QWEN25_15B}
BLOCK = 128


def make_teacher(folder: Path, shape: dict = QWEN25_05B) -> None:
    """The teacher of Qwen2.5-0.5B's shape (or `shape`) with random weights, saved in bf16."""
    from pydoc_data.topics import topics

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill.teachers import train_tokenizer

    tok = train_tokenizer([topics[k] for k in sorted(topics)], 8192)
    config = AutoConfig.for_model("qwen2", **shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


SPEC = """
[study]
name = "{name}"
trials = {trials}
seed = 0
concurrency = 1

[teacher]
model = "{teacher}"

[data]
source = "pydoc-topics"
block_length = {block}
train_blocks = {blocks}
valid_blocks = 8
eval_blocks = 16

[space]
families = ["qwen2"]
layers = [2, 5]
heads = [4, 8]
head_dim = [64]
ffn_ratio = [2.0, 4.0]
tie_embeddings = [true]
init = ["teacher"]

[brief]
steps = {steps}
batch_size = 8
lr = 5e-4

[loss]
forward_kl = 1.0
ce = 0.5
temperature = 1.0
top_k = 32

[full]
steps = {steps}
batch_size = 8
lr = 5e-4
eval_every = {steps}
checkpoint_every = {half}

[multi_fidelity]
enabled = false

[objectives]
quality = ["perplexity"]
size = ["params"]

[resources]
cpus = 2
"""


class Watch:
    """A command run in its own process, its resident memory sampled from /proc while it runs:
    the peak (the kernel's high-water mark), the median resident memory after `mark()` returns
    true, the bytes it wrote."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.peak = self.written = 0
        self.samples: list[int] = []  # resident memory after `mark()`
        self.marked_at: float | None = None

    def _status(self) -> dict[str, int]:
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) * 1024
        for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "write_bytes":
                fields[key] = int(value)
        return fields

    def wait(self, mark=lambda: False, every: float = 0.2, stop_at_mark: bool = False) -> float:
        while self.proc.poll() is None:
            if stop_at_mark and self.marked_at is not None:
                self.proc.terminate()  # the search stops where it is; nothing of it is read
                self.proc.wait()
                return time.perf_counter() - self.start
            try:
                s = self._status()
            except (OSError, ValueError, KeyError):  # ended between the poll and the read
                break
            self.peak, self.written = max(self.peak, s["VmHWM"]), s.get("write_bytes", self.written)
            if self.marked_at is None and mark():
                self.marked_at = time.perf_counter() - self.start
            if self.marked_at is not None:
                self.samples.append(s["VmRSS"])
            time.sleep(every)
        self.after = int(statistics.median(self.samples)) if self.samples else 0
        out = self.proc.communicate()[0]
        if self.proc.returncode != 0:
            raise SystemExit(f"{self.proc.args} exited with {self.proc.returncode}:\n{out[-3000:]}")
        return time.perf_counter() - self.start


IMPORTS = "import datasets, optuna, transformers, transformers.models.qwen2.modeling_qwen2, nas.cli, nas.prepare"
"""what the driver imports beside the teacher: its peak memory less this is the teacher's part"""


def libraries(work: Path) -> Watch:
    """A process that imports the driver's libraries and nothing else, run to its end."""
    imports = Watch([sys.executable, "-c", IMPORTS], work)
    imports.wait()
    return imports


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_size(work: Path, teacher: Path, blocks: int, args: argparse.Namespace) -> dict:
    import optuna

    from nas.study import distinct_evaluated

    spec = work / f"scale-{blocks}.toml"
    name = f"scale-{blocks}"
    spec.write_text(SPEC.format(name=name, trials=args.trials, teacher=teacher, block=BLOCK, blocks=blocks, steps=args.steps, half=max(1, args.steps // 2)))
    out = work / name
    cached = lambda: any((out / "cache").glob("*/meta.json"))  # noqa: E731
    nas = [sys.executable, "-m", "nas"]
    imports = libraries(work)
    search = Watch([*nas, "search", str(spec), "--no-report"], work)
    search_s = search.wait(mark=cached)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")
    trials = distinct_evaluated(study)
    first = min(t.number for t in trials)
    distill = Watch([*nas, "distill", str(spec), "--trial", str(first)], work)
    distill_s = distill.wait()
    cache = next((out / "cache").glob("*/meta.json")).parent
    meta = json.loads((cache / "meta.json").read_text())
    cached_tokens = sum(meta[f"{split}_items"] for split in ("train", "valid", "eval")) * BLOCK
    return {
        "blocks": blocks,
        "prepare_s": search.marked_at,
        "search_s": search_s,
        "trials_s": search_s - search.marked_at,
        "driver_peak": search.peak,
        "imports_peak": imports.peak,
        "driver_after": search.after,
        "search_written": search.written,
        "cache_bytes": folder_bytes(cache),
        "cached_tokens": cached_tokens,
        "distill_s": distill_s,
        "distill_peak": distill.peak,
        "distill_written": distill.written,
        "export_bytes": folder_bytes(out / "students"),
        "trials": [
            {
                "arch": t.user_attrs["arch_short"],
                "params": t.user_attrs["params"],
                "phases": t.user_attrs["phase_seconds"],
                "peak_rss_mb": t.user_attrs["peak_rss_mb"],
                "train_steps": t.user_attrs["train_steps"],
            }
            for t in trials
        ],
        "steps": args.steps,
        "batch": 8,
    }


def cache_only(work: Path, teacher: Path, teacher_bytes: int, args: argparse.Namespace) -> None:
    """The driver's peak memory while it caches the teacher's outputs, and its libraries' alone."""
    spec = work / "cache-only.toml"
    shape = SHAPES[args.teacher]
    text = SPEC.format(name="cache-only", trials=1, teacher=teacher, block=BLOCK, blocks=args.blocks, steps=1, half=1)
    spec.write_text(text.replace("head_dim = [64]", f"head_dim = [{shape['hidden_size'] // shape['num_attention_heads']}]"))
    shutil.rmtree(work / "cache-only", ignore_errors=True)
    imports = libraries(work)
    search = Watch([sys.executable, "-m", "nas", "search", str(spec), "--no-report"], work)
    search.wait(mark=lambda: any((work / "cache-only" / "cache").glob("*/meta.json")), stop_at_mark=True)
    gib = 2**30
    print(f"teacher: qwen2 at Qwen2.5-{args.teacher.upper()}'s shape, {teacher_bytes / 2 / 1e6:.0f}M parameters, {teacher_bytes / gib:.2f} GiB in bf16")
    print(f"teacher cache of {args.blocks} training blocks: {search.marked_at:.0f} s; the driver's peak {search.peak / gib:.2f} GiB "
          f"({search.peak / teacher_bytes:.2f}x the teacher; {(search.peak - imports.peak) / teacher_bytes:.2f}x beyond its "
          f"libraries' {imports.peak / gib:.2f} GiB)")  # fmt: skip


def report(runs: list[dict], teacher_params: int, teacher_bytes: int, size: str = "0.5b") -> None:
    gib = 2**30
    print(f"teacher: qwen2 at Qwen2.5-{size.upper()}'s shape, {teacher_params / 1e6:.0f}M parameters, {teacher_bytes / gib:.2f} GiB in bf16")
    print()
    print("| training blocks | stage | wall s | tokens/s | peak memory GiB | notes |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        tokens = r["cached_tokens"]
        trained = sum(t["train_steps"] for t in r["trials"]) * r["batch"] * BLOCK
        print(
            f"| {r['blocks']} | teacher cache (driver) | {r['prepare_s']:.0f} | {tokens / r['prepare_s']:,.0f} | "
            f"{r['driver_peak'] / gib:.2f} ({r['driver_peak'] / teacher_bytes:.2f}x the teacher; "
            f"{(r['driver_peak'] - r['imports_peak']) / teacher_bytes:.2f}x beyond its libraries' {r['imports_peak'] / gib:.2f}) | "
            f"{tokens:,} tokens cached, {r['cache_bytes'] / tokens:,.0f} bytes/token; the driver holds "
            f"{r['driver_after'] / gib:.2f} GiB (median) while trials run |"
        )
        worker = max(t["peak_rss_mb"] for t in r["trials"]) * 2**20
        print(
            f"| {r['blocks']} | {len(r['trials'])} trials | {r['trials_s']:.0f} | {trained / r['trials_s']:,.0f} | "
            f"{worker / gib:.2f} (a worker) | {r['search_written'] / gib:.2f} GiB written |"
        )
        steps = r["steps"] * r["batch"] * BLOCK
        print(
            f"| {r['blocks']} | nas distill + export | {r['distill_s']:.0f} | {steps / r['distill_s']:,.0f} | "
            f"{r['distill_peak'] / gib:.2f} | {r['distill_written'] / gib:.2f} GiB written, export {r['export_bytes'] / gib:.2f} GiB |"
        )
    print()
    print("| training blocks | trial | params | build (slicing) s | size s | loss s | train s | evaluate s | outside the loop |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        for t in r["trials"]:
            p = t["phases"]
            total = sum(p.values())
            print(
                f"| {r['blocks']} | {t['arch']} | {t['params'] / 1e6:.1f}M | {p.get('build', 0):.1f} | {p.get('size', 0):.1f} | "
                f"{p.get('loss', 0):.1f} | {p.get('train', 0):.1f} | {p.get('evaluate', 0):.1f} | {1 - p.get('train', 0) / total:.0%} |"
            )
    if len(runs) == 2:
        a, b = runs
        grow = b["cached_tokens"] / a["cached_tokens"]
        print()
        print(f"{grow:.2f}x the tokens cached: the cache took {b['prepare_s'] / a['prepare_s']:.2f}x the time, "
              f"{b['cache_bytes'] / a['cache_bytes']:.2f}x the bytes")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=48, help="training blocks of the smaller size (the larger: twice)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    p.add_argument("--teacher", choices=sorted(SHAPES), default="0.5b", help="Qwen2.5's shape of this size")
    p.add_argument("--cache-only", action="store_true", help="only the driver caching the teacher's outputs, at --blocks")
    args = p.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="scale-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        teacher = work / ("teacher" if args.teacher == "0.5b" else f"teacher-{args.teacher}")
        if not (teacher / "config.json").exists():
            make_teacher(teacher, SHAPES[args.teacher])
        teacher_bytes = sum(f.stat().st_size for f in teacher.glob("*.safetensors"))
        params = teacher_bytes // 2  # bf16
        if args.cache_only:
            return cache_only(work, teacher, teacher_bytes, args)
        runs = [run_size(work, teacher, blocks, args) for blocks in (args.blocks, 2 * args.blocks)]
        print(json.dumps(runs, indent=1), file=sys.stderr)
        report(runs, params, teacher_bytes, args.teacher)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
