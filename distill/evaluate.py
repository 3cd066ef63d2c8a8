"""Evaluation of a student: quality against the teacher on held-out blocks, and its size."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.loop import TeacherTargets, autocast
from distill.losses import topk_kd_loss


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    blocks: np.ndarray,
    targets: TeacherTargets | None = None,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Perplexity on `blocks` (N, L); with teacher targets (at temperature 1) also the KL to
    the teacher over its top-k + tail and the top-1 agreement with the teacher."""
    device = torch.device(device)
    model.to(device).eval()
    nll = kl = agree = 0.0
    count = 0
    for start in range(0, len(blocks), batch_size):
        tokens = torch.from_numpy(blocks[start : start + batch_size].astype(np.int64)).to(device)
        with autocast(device):
            logits = model(input_ids=tokens).logits[:, :-1].float()  # (B, L-1, V)
        n = tokens[:, 1:].numel()
        nll += F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum").item()
        if targets is not None:
            t_logp = torch.from_numpy(np.array(targets.logprobs[start : start + batch_size])).to(device)
            t_idx = torch.from_numpy(np.array(targets.indices[start : start + batch_size])).to(device)
            kl += topk_kd_loss(logits, t_logp, t_idx, 1.0).item() * n
            agree += (logits.argmax(-1) == t_idx[..., 0].long()).sum().item()
        count += n
    out = {"perplexity": math.exp(nll / count)}
    if targets is not None:
        out |= {"kl": kl / count, "top1_agreement": agree / count}
    return out


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters, and those outside the token/position embeddings and the LM head."""
    total = model.num_parameters()
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    if out_emb is not None and out_emb.weight is not in_emb.weight:
        embedding += sum(p.numel() for p in out_emb.parameters())
    return {"params": total, "non_embedding_params": total - embedding}


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


def latency_ms_per_token(model: torch.nn.Module, seq_len: int, *, device: torch.device | str = "cpu") -> float:
    """Median time of a batch-1 forward pass over `seq_len` tokens, divided by `seq_len`."""
    device = torch.device(device)
    model.to(device).eval()
    tokens = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    return median_ms(lambda: model(input_ids=tokens), device) / seq_len


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
def peak_memory_mb(model: torch.nn.Module, seq_len: int, *, device: torch.device | str = "cpu") -> float:
    """Peak memory of a batch-1 forward pass over `seq_len` tokens: weights plus the highest
    point of the allocations the pass makes (CUDA allocator on GPU, the profiler on CPU)."""
    device = torch.device(device)
    model.to(device).eval()
    tokens = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with autocast(device):
            model(input_ids=tokens)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base + weights) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(input_ids=tokens)
    # Each op's own allocations minus frees, and frees outside ops ("[memory]"), in time
    # order: their running sum is the live memory, at the granularity of one op.
    records = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return (peak + weights) / 2**20


def size_metrics(model: Any, seq_len: int, *, device: torch.device | str = "cpu") -> dict[str, float]:
    """Parameters, latency (ms/token at batch 1) and peak memory (MiB) on `device`."""
    return {
        **param_counts(model),
        "latency_ms": latency_ms_per_token(model, seq_len, device=device),
        "peak_memory_mb": peak_memory_mb(model, seq_len, device=device),
    }


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float()


def embedding_fidelity(student: torch.Tensor, teacher: torch.Tensor, k: int = 10) -> dict[str, float]:
    """How well student embeddings (N, D) stand in for the teacher's (N, D) on the same sentences:
    mean cosine; Spearman correlation of the two sets of pairwise cosine similarities; mean
    overlap of each sentence's top-k nearest neighbours under student and teacher."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    n = len(s)
    cosine = (s * t).sum(-1).mean().item()
    iu = torch.triu_indices(n, n, offset=1)
    s_sim, t_sim = s @ s.T, t @ t.T  # (N, N)
    rs, rt = _ranks(s_sim[iu[0], iu[1]]), _ranks(t_sim[iu[0], iu[1]])
    spearman = torch.corrcoef(torch.stack([rs, rt]))[0, 1].item()
    k = min(k, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    s_nn = s_sim.masked_fill(eye, -2).topk(k, dim=-1).indices  # (N, k)
    t_nn = t_sim.masked_fill(eye, -2).topk(k, dim=-1).indices
    overlap = (s_nn.unsqueeze(-1) == t_nn.unsqueeze(-2)).any(-1).float().sum(-1) / k
    return {"cosine": cosine, "spearman": spearman, "retrieval": overlap.mean().item()}
