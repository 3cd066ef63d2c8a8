"""One trial: build the sampled student, distill it briefly from the cached teacher outputs,
evaluate it. Runs inside a Ray worker; knows nothing of Ray or Optuna."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import torch

from distill import DistillConfig, PreparedData, distill, evaluate_lm, param_counts, size_metrics
from distill.embedding import (
    EmbeddingStudent,
    embedding_loss_fn,
    evaluate_embeddings,
    selection_matrix,
    sentence_latency_ms,
)
from distill.evaluate import peak_memory_mb
from search_spaces import (
    DecoderArch,
    EncoderArch,
    build_encoder,
    build_model,
    init_bert_from_teacher,
    init_decoder_from_teacher,
    kept_channels,
    pick_layers,
)

logger = logging.getLogger(__name__)

CURVE_POINTS = 50


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """Everything a worker needs besides the architecture; small and picklable."""

    data: PreparedData
    distill: DistillConfig
    storage_url: str
    study_name: str
    objectives: tuple[str, ...]
    seed: int
    cpus: float
    gpus: float


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def run_trial(arch_dict: dict[str, Any], plan: TrialPlan) -> dict[str, Any]:
    """Distill one architecture and measure it; returns every metric (raises on failure)."""
    torch.set_num_threads(max(1, int(plan.cpus)))
    device = pick_device(plan.gpus)
    arch = DecoderArch.from_dict(arch_dict)
    meta = plan.data.meta
    torch.manual_seed(plan.seed)
    student = build_model(arch, plan.data.teacher_config(), meta["block_length"])
    if arch.init == "teacher":
        init_decoder_student(student, arch, plan.data)
    start = time.perf_counter()
    result = distill(
        student,
        plan.data.blocks("train"),
        plan.distill,
        targets=plan.data.targets("train"),
        seed=plan.seed,
        device=device,
    )
    train_seconds = time.perf_counter() - start
    losses = result.losses
    quality = evaluate_lm(student, plan.data.blocks("eval"), plan.data.targets("eval"), device=device)
    size = size_metrics(student, meta["block_length"], device=device)
    stride = max(1, len(losses) // CURVE_POINTS)
    return {
        **quality,
        **size,
        "train_loss": losses[-1],
        "train_seconds": train_seconds,
        "train_steps": len(losses),
        "loss_curve": losses[::stride],
        "device": str(device),
    }


def init_decoder_student(student: Any, arch: DecoderArch, data: PreparedData) -> None:
    """Slice a decoder student from the teacher's weights, ranked on the study's calibration batch."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(data.meta["teacher"], use_safetensors=True)
    scores = torch.load(data.path / "importance.pt", weights_only=True)
    init_decoder_from_teacher(student, teacher, None, arch.layer_pick, scores=scores)


def build_embedding_student(arch: EncoderArch, data: PreparedData) -> EmbeddingStudent:
    """The encoder student with the teacher's pooling and a projection to the teacher's width;
    for init = teacher, sliced from the teacher's weights (channels, heads, neurons ranked on
    the study's calibration batch) with the projection putting kept channels back in place."""
    from transformers import AutoModel

    meta = data.meta
    encoder = build_encoder(arch, data.teacher_config())
    projection = None
    if arch.init == "teacher":
        teacher = AutoModel.from_pretrained(meta["teacher"], use_safetensors=True)
        scores = torch.load(data.path / "importance.pt", weights_only=True)
        init_bert_from_teacher(encoder, teacher, None, arch.layer_pick, scores=scores)
        projection = selection_matrix(kept_channels(scores, arch.hidden), meta["teacher_dim"])
    return EmbeddingStudent(encoder, meta["teacher_dim"], meta["pooling"], projection)


def embedding_size(student: EmbeddingStudent, seq_len: int, device: torch.device) -> dict[str, float]:
    """What ships (encoder + projection): parameters, latency per sentence at batch 1 and 32, peak memory."""
    counts = param_counts(student.encoder)
    extra = student.projection.weight.numel() if student.projection is not None else 0
    student.eval()
    return {
        "params": counts["params"] + extra,
        "non_embedding_params": counts["non_embedding_params"] + extra,
        "latency_ms": sentence_latency_ms(student, 1, seq_len, device),
        "latency_ms_b32": sentence_latency_ms(student, 32, seq_len, device),
        "peak_memory_mb": peak_memory_mb(student.encoder, seq_len, device=device),
    }


def layer_map(arch: EncoderArch, teacher_layers: int) -> list[int]:
    """The teacher hidden state each student hidden state is matched to (embeddings to
    embeddings; each student layer to the teacher layer it was taken from, or evenly spread)."""
    if arch.layers > teacher_layers:
        return [0] + [round((j + 1) * teacher_layers / arch.layers) for j in range(arch.layers)]
    pick = arch.layer_pick if arch.init == "teacher" else "even"
    return [0] + [p + 1 for p in pick_layers(teacher_layers, arch.layers, pick)]


def run_embedding_trial(arch_dict: dict[str, Any], plan: TrialPlan) -> dict[str, Any]:
    """Distill one encoder architecture into the teacher's embedding space and measure it."""
    torch.set_num_threads(max(1, int(plan.cpus)))
    device = pick_device(plan.gpus)
    arch = EncoderArch.from_dict(arch_dict)
    data, meta = plan.data, plan.data.meta
    torch.manual_seed(plan.seed)
    student = build_embedding_student(arch, data).to(device)
    targets = {
        name: data.array(f"train_{name}")
        for name in ("emb", "hidden", "query", "key", "value")
        if (data.path / f"train_{name}.npy").exists()
    }
    ids, mask = data.array("train_ids"), data.array("train_mask")
    heads = math.gcd(meta["teacher_heads"], arch.hidden)
    mapping = layer_map(arch, meta["teacher_layers"])
    loss_fn = embedding_loss_fn(student, ids, mask, targets, plan.distill, device, heads, mapping)
    start = time.perf_counter()
    result = distill(student, ids, plan.distill, seed=plan.seed, device=device, loss_fn=loss_fn)
    train_seconds = time.perf_counter() - start
    quality = evaluate_embeddings(
        student, data.array("eval_ids"), data.array("eval_mask"), data.array("eval_emb"), device
    )
    stride = max(1, len(result.losses) // CURVE_POINTS)
    return {
        **quality,
        **embedding_size(student, meta["block_length"], device),
        "train_loss": result.losses[-1],
        "train_seconds": train_seconds,
        "train_steps": len(result.losses),
        "loss_curve": result.losses[::stride],
        "device": str(device),
    }
