"""Sentence-embedding students: BERT encoders with the teacher's pooling and a projection into
the teacher's embedding space, distilled on paragraphs from the teacher's sentence embeddings
(and, where the loss asks, its hidden states and last-layer Q/K/V), measured by how well their
embeddings stand in for the teacher's."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from distill.cache import PreparedData
from distill.data import DataConfig, encode_texts, load_documents, paragraphs
from distill.errors import InputError
from distill.evaluate import median_ms, param_counts, peak_memory_mb
from distill.intermediate import Stack, check_layer_map, run_with_layers
from distill.precision import autocast
from distill.runtime import OnnxGraph, with_runtime
from distill.tasks.base import (
        NON_EMBEDDING_PARAMS,
    PARAMS,
    PEAK_MEMORY,
    Batch,
    CardParts,
    Metric,
    OutputArray,
    Task,
    Teacher,
)
from distill.tasks.text import (
    LAYER_GROUPS,
    LAYER_VALUES,
    check_positions,
    check_space_fits,
    layer_arrays,
    layer_groups,
    layer_outputs,
    slice_teacher,
    student_layers,
    trimmed,
)
from distill.teachers import TeacherSource
from search_spaces import (
    EncoderArch,
    EncoderSpace,
    bert_importance,
    build_encoder,
    init_bert_from_teacher,
    kept_channels,
)

POOLING_MODES = ("mean", "cls", "max")
CALIBRATION = 32

QUALITY = (
    Metric("cosine", "quality", "max", "{:.4f}", "mean cosine to the teacher's embedding of the same sentence"),
    Metric("spearman", "quality", "max", "{:.4f}", "Spearman correlation of pairwise similarities with the teacher's"),
    Metric("retrieval", "quality", "max", "{:.3f}", "overlap of top-10 nearest neighbours with the teacher's"),
)
SPEED_BATCH = 32
RUNTIME_SPEED = (
    Metric("latency_ms", "size", "min", "{:.3f}", "latency, ms/sentence (batch 1)"),
    Metric("sentences_per_s", "size", "max", "{:.1f}", f"sentences/s at batch {SPEED_BATCH}"),
)
METRICS = with_runtime(
    (
        *QUALITY,
        PARAMS,
        NON_EMBEDDING_PARAMS,
        Metric("latency_ms", "size", "min", "{:.3f}", "latency, ms/sentence (batch 1)"),
        Metric("latency_ms_b32", "size", "min", "{:.3f}", "latency, ms/sentence (batch 32)"),
        PEAK_MEMORY,
    ),
    RUNTIME_SPEED,
)

USAGE = """from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{path}")
embeddings = model.encode(["A sentence to embed.", "Another one."])"""

RUNTIME_USAGE = """import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("{path}/tokenizer.json")  # it truncates at the export's length
tokenizer.enable_padding()  # to the longest of a batch: the attention mask hides the padding
session = ort.InferenceSession("{path}/onnx/model{file}")
batch = tokenizer.encode_batch(["A sentence to embed.", "Another one."])
feeds = {{
    "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
    "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
}}
embeddings = session.run(["sentence_embedding"], feeds)[0]  # (2, D), as the PyTorch model's"""

QKV = ("query", "key", "value")


@dataclasses.dataclass(frozen=True)
class EmbeddingDataConfig(DataConfig):
    """The `[data]` section of an embedding study: text cut into the items it embeds."""

    sentences: float = 0.0
    """the share of paragraphs embedded as their sentences rather than whole (0: paragraphs
    only; 1: sentences only), so that items are as long as what the model will embed: queries
    and titles are a sentence, passages a paragraph. Which paragraphs are cut depends on their
    text alone, the same in every split and run."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.sentences <= 1.0:
            raise ValueError(f"sentences: must be between 0 and 1 (a share of the paragraphs), got {self.sentences}")


def items(texts: list[str], sentences: float) -> list[str]:
    """Documents cut into paragraphs (`distill.data.paragraphs`), a `sentences` share of them
    (picked by a hash of their text) cut further into sentences of at least 20 characters."""
    out = []
    for para in paragraphs(texts):
        if zlib.crc32(para.encode()) % 10_000 < sentences * 10_000:
            out += [s for s in SENTENCE_END.split(para) if len(s) >= 20]
        else:
            out.append(para)
    return out


SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")
"""where a sentence ends: after . ! or ? (and a closing quote or bracket), before white space
and a capital, digit or opening quote (abbreviations such as "e.g. The" are cut too)"""


@dataclasses.dataclass(frozen=True)
class EmbeddingLossParams:
    """The parameters of an embedding loss besides the term weights."""

    layer_map: str | tuple[int, ...] = "init"
    """which student layers the intermediate-layer terms match with which teacher layers:
    init, uniform, last-K, or a list of teacher states (`distill.intermediate.layer_pairs`)"""
    similarity_temperature: float = 0.05
    """the temperature of the `similarity` term's softmax over a batch's cosine similarities"""

    def __post_init__(self) -> None:
        check_layer_map(self.layer_map)
        if not self.similarity_temperature > 0:
            raise ValueError(f"similarity_temperature: must be > 0, got {self.similarity_temperature}")


def read_pooling(folder: Path) -> dict[str, Any]:
    """Pooling of a sentence-transformers folder (modules.json, 1_Pooling/config.json,
    Normalize); a plain HF folder gets mean pooling without normalization."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return {"mode": "mean", "normalize": False}
    modules = json.loads(modules_file.read_text())
    mode, normalize = "mean", False
    for m in modules:
        if m["type"].endswith("Pooling"):
            cfg = json.loads((folder / m["path"] / "config.json").read_text())
            mode = next(
                (
                    p
                    for p in POOLING_MODES
                    if cfg.get(f"pooling_mode_{p}_tokens" if p != "cls" else "pooling_mode_cls_token")
                ),
                "mean",
            )
        normalize = normalize or m["type"].endswith("Normalize")
    return {"mode": mode, "normalize": normalize}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence embeddings (B, D) from token states (B, T, D) over real tokens, mask (B, T)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class EmbeddingStudent(torch.nn.Module):
    """An encoder, the teacher's pooling, and a projection to the teacher's embedding width
    (absent when the widths agree), so that the student's embeddings stand in for the teacher's.
    `relation_heads`: how many relation heads its last layer's Q/K/V are split into to meet
    the teacher's (MiniLM)."""

    def __init__(
        self,
        encoder: Any,
        teacher_dim: int,
        pooling: dict[str, Any],
        projection: torch.Tensor | None = None,
        relation_heads: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = dict(pooling)
        width = encoder.config.hidden_size
        self.projection = torch.nn.Linear(width, teacher_dim, bias=False) if width != teacher_dim else None
        if self.projection is not None and projection is not None:
            with torch.no_grad():
                self.projection.weight.copy_(projection)
        self.relation_heads = relation_heads

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, layers: set[str] | None = None) -> Any:
        """Sentence embeddings (B, D); given `layers` (intermediate-layer groups), the
        embeddings and the encoder's output holding the hidden states and attention maps asked."""
        out = run_with_layers(self.encoder, layers or set(), input_ids=input_ids, attention_mask=attention_mask)
        emb = pool(out.last_hidden_state, attention_mask, self.pooling["mode"])
        if self.projection is not None:
            emb = self.projection(emb)
        if self.pooling["normalize"]:
            emb = F.normalize(emb, dim=-1)
        return (emb, out) if layers is not None else emb


def selection_matrix(kept: torch.Tensor, width: int) -> torch.Tensor:
    """(width_teacher, width_student) 0/1 matrix putting kept channel j back at kept[j]."""
    m = torch.zeros(width, len(kept))
    m[kept, torch.arange(len(kept))] = 1.0
    return m


class LastLayerQKV:
    """Captures the query, key and value projections of a BERT model's last layer."""

    def __init__(self, model: Any) -> None:
        self.out: dict[str, torch.Tensor] = {}
        attn = model.encoder.layer[-1].attention.self
        self.hooks = [
            getattr(attn, n).register_forward_hook(lambda _m, _i, o, n=n: self.out.__setitem__(n, o)) for n in QKV
        ]

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


class Embedding(Task):
    name = "embedding"
    data_config = EmbeddingDataConfig
    space = EncoderSpace
    metrics = METRICS
    loss_params = EmbeddingLossParams
    default_weights = {"cosine": 1.0, "mse": 1.0}
    outputs = {
        "sentence_embedding": ("teacher_embedding",),
        "hidden_states": ("teacher_encoder_hidden",),
        "attentions": ("teacher_encoder_attentions",),
        "qkv": tuple(f"teacher_{n}" for n in QKV),
    }
    values = frozenset({"student_embedding", *(f"student_{n}" for n in QKV), "mask", "relation_heads", *LAYER_VALUES})
    eval_outputs = ("sentence_embedding",)
    held_out_params: dict[str, Any] = {}
    teacher_batch = 32
    card = CardParts(
        "sentence-transformers",
        "sentence-similarity",
        USAGE,
        "texts",
        "sent_s",
        tokenizer="the teacher's tokenizer",
        runtime_usage=RUNTIME_USAGE,
    )
    eval_keys, eval_limit = DataConfig.EVAL_KEYS, DataConfig.EVAL_LIMIT

    # -- the teacher and the data, once per study
    def load_data(self, data: EmbeddingDataConfig, base_dir: Path, seed: int) -> dict[str, list[str]]:
        return load_documents(data, base_dir, seed)

    def load_teacher(self, source: TeacherSource) -> Teacher:
        model_type = source.config().model_type  # before any weights load
        if model_type != "bert":
            raise InputError(f"teacher.model: embedding students are BERT encoders; the teacher is {model_type!r}")
        model, tokenizer = source.load("AutoModel")
        pooling = read_pooling(Path(source.path)) if source.local else {"mode": "mean", "normalize": False}
        return Teacher(model, tokenizer, source, {"pooling": pooling})

    def check_space(self, space: EncoderSpace, teacher_config: Any) -> None:
        check_space_fits(space, teacher_config)

    def encode(self, texts: list[str], teacher: Teacher, data: EmbeddingDataConfig, split: str) -> dict[str, np.ndarray]:
        check_positions(teacher.model.config, data.block_length, "data.block_length")
        cut = items(texts, data.sentences)
        if len(cut) < 2:
            raise InputError(
                f"data.source: the {split} split holds {len(cut)} paragraph(s) of 40 characters or more, "
                "at least 2 are needed; give more text"
            )
        ids, mask = encode_texts(cut, teacher.tokenizer, data.block_length, data.limit(split))
        return {"ids": ids, "mask": mask}

    def lengths(self, data: PreparedData, split: str) -> np.ndarray:
        return np.asarray(data.array(f"{split}_mask")).sum(1)

    def batch(self, data: PreparedData, split: str, idx: np.ndarray, device: torch.device) -> Batch:
        i, m = trimmed(data.array(f"{split}_ids")[idx], data.array(f"{split}_mask")[idx], device)
        return Batch({"input_ids": i, "attention_mask": m}, {"tokens": i.shape[1]})

    def output_arrays(self, groups: set[str], teacher: Teacher, params: dict[str, Any], data: DataConfig) -> dict[str, OutputArray]:
        c = teacher.model.config
        width = c.hidden_size
        stack = (c.num_hidden_layers, c.num_attention_heads, width, data.block_length, "tokens")
        out = layer_arrays(groups, {"encoder": stack})
        if "sentence_embedding" in groups:
            out["teacher_embedding"] = OutputArray((width,), "float32")
        if "qkv" in groups:
            out |= {f"teacher_{n}": OutputArray((data.block_length, width), "float16", {0: "tokens"}) for n in QKV}
        return out

    def teacher_outputs(self, teacher: Teacher, batch: Batch, groups: set[str], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        i, m = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        qkv = LastLayerQKV(teacher.model) if "qkv" in groups else None
        try:
            with autocast(i.device):
                states = run_with_layers(teacher.model, groups & set(LAYER_GROUPS), input_ids=i, attention_mask=m)
        finally:
            if qkv is not None:
                qkv.close()
        out = {}
        if "sentence_embedding" in groups:
            emb = pool(states.last_hidden_state.float(), m, teacher.info["pooling"]["mode"])  # (B, D)
            out["teacher_embedding"] = F.normalize(emb, dim=-1) if teacher.info["pooling"]["normalize"] else emb
        out |= layer_outputs(states, ("encoder",), groups)
        if qkv is not None:
            out |= {f"teacher_{n}": qkv.out[n].float() for n in QKV}  # (B, t, D)
        return out

    def importance(self, teacher: Teacher, data: PreparedData, device: torch.device) -> dict[str, Any] | None:
        calib = {
            "input_ids": torch.from_numpy(data.array("train_ids")[:CALIBRATION].astype(np.int64)).to(device),
            "attention_mask": torch.from_numpy(data.array("train_mask")[:CALIBRATION].astype(np.int64)).to(device),
        }
        return bert_importance(teacher.model, calib)

    # -- students
    def build_student(self, arch: dict[str, Any], data: PreparedData, device: torch.device) -> torch.nn.Module:
        """The encoder with the teacher's pooling and a projection to the teacher's width; for
        init = teacher, sliced from the teacher's weights (channels, heads, neurons ranked on the
        study's calibration batch) with the projection putting kept channels back in place."""
        a = EncoderArch.from_dict(arch)
        config = data.teacher_config()
        encoder = build_encoder(a, config)
        projection = None
        if a.init == "teacher":
            scores = slice_teacher(encoder, data, "AutoModel", init_bert_from_teacher, a.layer_pick)
            projection = selection_matrix(kept_channels(scores, a.hidden), config.hidden_size)
        heads = math.gcd(config.num_attention_heads, a.hidden)
        pooling = data.meta["teacher_info"]["pooling"]
        return EmbeddingStudent(encoder, config.hidden_size, pooling, projection, heads).to(device)

    def as_student(self, teacher: Teacher, data: PreparedData) -> torch.nn.Module:
        return EmbeddingStudent(teacher.model, teacher.model.config.hidden_size, teacher.info["pooling"])

    def stacks(self, arch: dict[str, Any], data: PreparedData) -> dict[str, Stack]:
        a, c = EncoderArch.from_dict(arch), data.teacher_config()
        pick = a.layer_pick if a.init == "teacher" else "even"
        return {
            "encoder": Stack(a.layers, c.num_hidden_layers, a.hidden, c.hidden_size, a.heads, c.num_attention_heads, pick)
        }

    def forward(
        self, student: torch.nn.Module, batch: Batch, wanted: set[str], teacher: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        i, m = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        # Q/K/V are captured for this forward pass only: validation and export run hook-free.
        qkv = LastLayerQKV(student.encoder) if wanted & {f"student_{n}" for n in QKV} else None
        try:
            with autocast(i.device):
                emb, states = student(i, m, layers=layer_groups(wanted))
        finally:
            if qkv is not None:
                qkv.close()
        out: dict[str, Any] = {"student_embedding": emb, "mask": m, "relation_heads": student.relation_heads}
        out |= student_layers(states, {"encoder": m}, wanted)
        if qkv is not None:
            out |= {f"student_{n}": qkv.out[n] for n in QKV}
        return out

    def evaluate(self, student: torch.nn.Module, data: PreparedData, split: str, device: torch.device) -> dict[str, float]:
        return evaluate_embeddings(
            student,
            data.array(f"{split}_ids"),
            data.array(f"{split}_mask"),
            data.array(f"{split}_teacher_embedding"),
            device,
        )

    def size(self, student: torch.nn.Module, data: PreparedData, device: torch.device) -> dict[str, float]:
        """What ships (encoder + projection): parameters, latency per sentence at batch 1 and 32, peak memory."""
        seq_len = data.meta["data"]["block_length"]
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

    def param_counts(self, arch: dict[str, Any], data: PreparedData) -> dict[str, int]:
        a, config = EncoderArch.from_dict(arch), data.teacher_config()
        counts = a.param_counts(config.vocab_size, config.max_position_embeddings, getattr(config, "type_vocab_size", 2))
        width = config.hidden_size
        extra = a.hidden * width if a.hidden != width else 0  # the projection to the teacher's width
        return {k: v + extra for k, v in counts.items()}

    def describe(self, arch: dict[str, Any]) -> str:
        return EncoderArch.from_dict(arch).short()

    def export(self, student: torch.nn.Module, data: PreparedData, folder: Path) -> None:
        """A sentence-transformers folder (Transformer, Pooling, Dense projection, Normalize)
        saved by sentence-transformers itself."""
        from sentence_transformers import SentenceTransformer, models
        from transformers import AutoTokenizer

        student = student.cpu().eval()
        width = student.encoder.config.hidden_size
        with tempfile.TemporaryDirectory() as hf:  # the plain HF encoder, read back by sentence-transformers
            student.encoder.save_pretrained(hf)
            AutoTokenizer.from_pretrained(data.path / "teacher").save_pretrained(hf)
            modules: list[Any] = [
                models.Transformer(hf, max_seq_length=data.meta["data"]["block_length"]),
                models.Pooling(width, pooling_mode=student.pooling["mode"]),
            ]
            if student.projection is not None:
                weight = student.projection.weight.detach().clone()
                modules.append(
                    models.Dense(
                        width, weight.shape[0], bias=False, activation_function=torch.nn.Identity(), init_weight=weight
                    )
                )
            if student.pooling["normalize"]:
                modules.append(models.Normalize())
            SentenceTransformer(modules=modules, device="cpu").save(str(folder))


    # -- the runtime (`distill.runtime`)
    def onnx_graphs(self, student: torch.nn.Module, data: PreparedData) -> dict[str, OnnxGraph]:
        """One graph from token ids and attention mask to the sentence embedding (pooling,
        projection and normalization inside)."""
        ids = torch.ones(2, 8, dtype=torch.long)
        axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens")}
        return {
            "model": OnnxGraph(student, (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], ["sentence_embedding"], (axes, axes))
        }

    def runtime_speed(self, sessions: dict[str, Any], data: PreparedData) -> dict[str, float]:
        """Per sentence at batch 1 and sentences/s at batch 32, of the study's item length (as `size`)."""
        seq_len, session = data.meta["data"]["block_length"], sessions["model"]

        def run(batch: int) -> Callable[[], Any]:
            feeds = {"input_ids": np.ones((batch, seq_len), np.int64), "attention_mask": np.ones((batch, seq_len), np.int64)}
            return lambda: session.run(None, feeds)

        cpu = torch.device("cpu")
        return {
            "latency_ms": median_ms(run(1), cpu, repeats=5),
            "sentences_per_s": SPEED_BATCH / (median_ms(run(SPEED_BATCH), cpu, repeats=3) / 1000.0),
        }

    def runtime_evaluate(self, sessions: dict[str, Any], data: PreparedData, split: str) -> dict[str, float]:
        session = sessions["model"]

        def embed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
            return torch.from_numpy(session.run(None, feeds)[0])

        return evaluate_embeddings(
            embed, data.array(f"{split}_ids"), data.array(f"{split}_mask"), data.array(f"{split}_teacher_embedding"), torch.device("cpu")
        )


@torch.no_grad()
def encode(
    model: Callable[..., Any], ids: np.ndarray, mask: np.ndarray, device: torch.device, batch: int = 32
) -> torch.Tensor:
    """Embeddings (N, D) of a model that maps (input_ids, attention_mask) to (B, D)."""
    out = []
    for start in range(0, len(ids), batch):
        i, m = trimmed(ids[start : start + batch], mask[start : start + batch], device)
        with autocast(device):
            out.append(model(input_ids=i, attention_mask=m).float().cpu())
    return torch.cat(out)


def evaluate_embeddings(
    student: Callable[..., Any], ids: np.ndarray, mask: np.ndarray, teacher_emb: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Cosine fidelity, Spearman of pairwise similarities and top-10 retrieval agreement."""
    if isinstance(student, torch.nn.Module):
        student.eval()
    return embedding_fidelity(encode(student, ids, mask, device), torch.from_numpy(np.array(teacher_emb)))


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
    # scipy: tied similarities share their mean rank, and the sums are float64 (in float32 the
    # correlation of ~N^2/2 ranks moved in its fifth digit between CPUs).
    spearman = float(stats.spearmanr(s_sim[iu[0], iu[1]].double().numpy(), t_sim[iu[0], iu[1]].double().numpy())[0])
    k = min(k, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    s_nn = s_sim.masked_fill(eye, -2).topk(k, dim=-1).indices  # (N, k)
    t_nn = t_sim.masked_fill(eye, -2).topk(k, dim=-1).indices
    overlap = (s_nn.unsqueeze(-1) == t_nn.unsqueeze(-2)).any(-1).float().sum(-1) / k
    return {"cosine": cosine, "spearman": spearman, "retrieval": overlap.mean().item()}


def sentence_latency_ms(model: Callable[..., Any], batch: int, seq_len: int, device: torch.device) -> float:
    """Median time per sentence of a forward pass over a (batch, seq_len) batch."""
    ids = torch.ones(batch, seq_len, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    return median_ms(lambda: model(input_ids=ids, attention_mask=mask), device, repeats=5) / batch


TASK = Embedding()
