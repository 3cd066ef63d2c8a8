"""Measuring a model: parameter counts, timing and peak memory, shared by every task."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from distill.precision import autocast


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters, and those outside the token/position embeddings and the LM head."""
    total = model.num_parameters()
    # By identity: an encoder-decoder's source, target and output embeddings may be one tensor.
    embedding = {id(p): p for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    out_emb = model.get_output_embeddings()
    if out_emb is not None:
        embedding.update((id(p), p) for p in out_emb.parameters())
    return {"params": total, "non_embedding_params": total - sum(p.numel() for p in embedding.values())}


def median_ms(run: Any, device: torch.device, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of `run()` in ms after warm-up runs, synchronizing CUDA around each."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast(device):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Kineto writes a line to the process's stderr (fd 2) at every profiler start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@torch.no_grad()
def peak_memory_mb(
    model: torch.nn.Module,
    seq_len: int,
    *,
    device: torch.device | str = "cpu",
    inputs: dict[str, torch.Tensor] | None = None,
) -> float:
    """Peak memory of a batch-1 forward pass over `seq_len` tokens (or over `inputs`, for models
    that take more than token ids), in the enclosing precision: weights plus the highest point
    of the allocations the pass makes (CUDA allocator on GPU, the profiler on CPU)."""
    device = torch.device(device)
    model.to(device).eval()
    if inputs is None:
        inputs = {"input_ids": torch.zeros(1, seq_len, dtype=torch.long, device=device)}
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with autocast(device):
            model(**inputs)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base + weights) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, autocast(device):
        model(**inputs)
    # Each op's own allocations minus frees, and frees outside ops ("[memory]"), in time
    # order: their running sum is the live memory, at the granularity of one op.
    records = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return (peak + weights) / 2**20
