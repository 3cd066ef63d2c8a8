"""Causal-LM students: decoder-only students (GPT-2, Llama, Qwen2, Mistral) that share the
teacher's tokenizer, distilled on packed token blocks from the teacher's top-k next-token
distribution, measured by perplexity, KL to the teacher and top-1 agreement."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.cache import PreparedData
from distill.data import DataConfig, load_documents, pack
from distill.errors import InputError
from distill.evaluate import median_ms, param_counts, peak_memory_mb
from distill.intermediate import Stack, run_with_layers
from distill.losses import next_token_ce, topk_kd_loss
from distill.precision import autocast
from distill.runtime import KvCache, OnnxGraph, cache_argument, cache_names, cache_of, with_runtime
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
    TopKLossParams,
    align_to_teacher,
    by_rows,
    check_positions,
    check_space_fits,
    confidence_arrays,
    layer_arrays,
    layer_groups,
    layer_outputs,
    logit_outputs,
    next_token_chunks,
    padded_rows,
    ranked_arrays,
    ranked_at,
    rows_within,
    slice_teacher,
    student_layers,
    topk_arrays,
)
from distill.teachers import TeacherSource, TeacherTraining, train_and_save, train_tokenizer
from search_spaces import (
    FAMILIES,
    DecoderArch,
    DecoderSpace,
    build_model,
    decoder_importance,
    init_decoder_from_teacher,
)

logger = logging.getLogger(__name__)

QUALITY = (
    Metric("perplexity", "quality", "min", "{:.2f}", "perplexity (lower is better)"),
    Metric("kl", "quality", "min", "{:.4f}", "KL to the teacher, nats/token (lower is better)"),
    Metric("top1_agreement", "quality", "max", "{:.3f}", "top-1 agreement with the teacher"),
)
SPEED_BATCH = 8
NEW_TOKENS = 16
"""tokens generated after the prompt (half a block) when the runtime's speed is measured"""
RUNTIME_SPEED = (
    Metric("latency_ms", "size", "min", "{:.4f}", "ms per generated token (batch 1, with the KV cache)"),
    Metric("first_token_ms", "size", "min", "{:.3f}", "ms to the first token after a prompt of half a block (batch 1)"),
    Metric("tokens_per_s", "size", "max", "{:.1f}", f"generated tokens/s at batch {SPEED_BATCH}"),
)
METRICS = with_runtime(
    (
        *QUALITY,
        PARAMS,
        NON_EMBEDDING_PARAMS,
        Metric("latency_ms", "size", "min", "{:.4f}", "latency of a forward pass over a block, ms/token (batch 1)"),
        PEAK_MEMORY,
    ),
    RUNTIME_SPEED,
)

USAGE = """from transformers import pipeline
generate = pipeline("text-generation", model="{path}")
print(generate("The", max_new_tokens=20)[0]["generated_text"])"""

RUNTIME_USAGE = """import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("{path}/tokenizer.json")
session = ort.InferenceSession("{path}/onnx/model{file}")
outputs = [o.name for o in session.get_outputs()]
# the KV cache: empty at first, then what the last step returned
past = {{i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        for i in session.get_inputs() if i.name.startswith("past_key_values.")}}
tokens = tokenizer.encode("The").ids
step = tokens
for _ in range(20):  # greedy
    end = len(tokens)
    feeds = {{
        "input_ids": np.array([step], dtype=np.int64),
        "attention_mask": np.ones((1, end), dtype=np.int64),
        "position_ids": np.arange(end - len(step), end, dtype=np.int64)[None],
    }}
    values = dict(zip(outputs, session.run(None, {{**feeds, **past}})))
    past = {{name: values[name.replace("past_key_values", "present")] for name in past}}
    step = [int(values["logits"][0, -1].argmax())]
    tokens += step
print(tokenizer.decode(tokens))"""


@dataclasses.dataclass(frozen=True)
class CausalLossParams(TopKLossParams):
    """The parameters of a causal-LM loss besides the term weights."""

    temperature: float = 2.0
    """softmax temperature of the teacher's cached distribution on training blocks and of the KL"""


class CausalLM(Task):
    name = "causal-lm"
    data_config = DataConfig
    space = DecoderSpace
    metrics = METRICS
    loss_params = CausalLossParams
    default_weights = {"forward_kl": 1.0, "ce": 0.5}
    outputs = {
        "topk": ("teacher_logprobs", "teacher_indices"),
        "logits": ("teacher_logits",),
        "confidence": ("teacher_entropy", "teacher_nll"),
        "ranked": ("teacher_ranked", "teacher_aligned"),
        "hidden_states": ("teacher_decoder_hidden",),
        "attentions": ("teacher_decoder_attentions",),
    }
    values = frozenset({"student_logits", "labels", "mask", *LAYER_VALUES})
    eval_outputs = ("topk",)
    held_out_params = {"temperature": 1.0}  # held-out KL and agreement against the plain distribution
    teacher_batch = 16
    card = CardParts(
        "transformers",
        "text-generation",
        USAGE,
        "blocks",
        "tok_s",
        tokenizer="the teacher's tokenizer",
        runtime_usage=RUNTIME_USAGE,
    )
    eval_keys, eval_limit = DataConfig.EVAL_KEYS, DataConfig.EVAL_LIMIT
    trains_teacher = True
    samples_on_policy = True

    # -- the teacher and the data, once per study
    def load_data(self, data: DataConfig, base_dir: Path, seed: int) -> dict[str, list[str]]:
        return load_documents(data, base_dir, seed)

    def load_teacher(self, source: TeacherSource) -> Teacher:
        config = source.config()
        if getattr(config, "is_encoder_decoder", False):
            raise InputError(
                f"teacher.model: causal-LM students learn from a decoder-only teacher (AutoModelForCausalLM); "
                f"{source.name!r} is an encoder-decoder {config.model_type!r} model (study.task = \"translation\" distills it)"
            )
        if encoder_only(config):
            raise InputError(
                f"teacher.model: causal-LM students learn from a decoder-only teacher (AutoModelForCausalLM); "
                f"{source.name!r} is an encoder-only {config.model_type!r} model (study.task = \"embedding\" distills it)"
            )
        model, tokenizer = source.load("AutoModelForCausalLM")
        return Teacher(model, tokenizer, source)

    def train_teacher(self, cfg: TeacherTraining, texts: list[str], out: Path, data: DataConfig) -> None:
        """Train a tokenizer and a small decoder on `texts` and `save_pretrained` both into `out`."""
        if cfg.family == "marian":
            raise InputError("teacher.train.family: a causal-LM teacher is a decoder: gpt2, llama, qwen2 or mistral; got 'marian'")
        train_teacher(cfg, texts, out, data.block_length)

    def check_space(self, space: DecoderSpace, teacher_config: Any) -> None:
        check_space_fits(space, teacher_config)

    def encode(self, texts: list[str], teacher: Teacher, data: DataConfig, split: str) -> dict[str, np.ndarray]:
        check_positions(teacher.model.config, data.block_length, "data.block_length")
        return {"blocks": pack(texts, teacher.tokenizer, data.block_length, data.limit(split))}

    def lengths(self, data: PreparedData, split: str) -> np.ndarray:
        blocks = data.array(f"{split}_blocks")
        return np.full(len(blocks), blocks.shape[1])

    def batch(self, data: PreparedData, split: str, idx: np.ndarray, device: torch.device) -> Batch:
        tokens = torch.from_numpy(data.array(f"{split}_blocks")[idx].astype(np.int64)).to(device)  # (B, L)
        return Batch({"input_ids": tokens})

    def output_arrays(self, groups: set[str], teacher: Teacher, params: dict[str, Any], data: DataConfig) -> dict[str, OutputArray]:
        # packed blocks: every position counts, nothing to cut
        c = teacher.model.config
        arrays = topk_arrays(c.vocab_size, params, data.block_length - 1, {}) if "topk" in groups else {}
        arrays |= confidence_arrays(groups, data.block_length - 1, {})
        arrays |= ranked_arrays(groups, params, data.block_length - 1, {})
        stack = (c.num_hidden_layers, c.num_attention_heads, c.hidden_size, data.block_length, None)
        return arrays | layer_arrays(groups, {"decoder": stack})

    def teacher_outputs(self, teacher: Teacher, batch: Batch, groups: set[str], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        if teacher.student_tokenizer is not None:
            return _aligned_outputs(teacher, batch.inputs["input_ids"], params)
        layers = groups & set(LAYER_GROUPS)

        def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            tokens = inputs["input_ids"]
            if "logits" in groups:  # a live teacher's whole logits, for divergences over the vocabulary
                out = run_with_layers(teacher.model, layers, input_ids=tokens)
                kept = logit_outputs(out.logits[:, :-1].float(), groups, params, tokens[:, 1:])
            else:  # what is kept of them, taken a slice of positions at a time
                out, chunks = next_token_chunks(teacher.model, layers, tokens)
                labels = tokens[:, 1:].flatten()
                taken = [logit_outputs(logits[None], groups, params, labels[pos][None]) for pos, logits in chunks]
                kept = {name: torch.cat([t[name][0] for t in taken]).unflatten(0, (len(tokens), -1)) for name in taken[0]}
            return kept | layer_outputs(out, ("decoder",), groups)

        return by_rows(run, {"input_ids": batch.inputs["input_ids"]}, teacher.model.config.vocab_size)

    def importance(self, teacher: Teacher, data: PreparedData, device: torch.device) -> dict[str, Any] | None:
        if teacher.model.config.model_type not in FAMILIES:
            return None  # no slicing for other families
        calib = torch.from_numpy(data.array("train_blocks")[:16].astype(np.int64)).to(device)
        return decoder_importance(teacher.model, {"input_ids": calib})

    # -- students
    def build_student(self, arch: dict[str, Any], data: PreparedData, device: torch.device) -> torch.nn.Module:
        a = DecoderArch.from_dict(arch)
        student = build_model(a, data.teacher_config(), data.meta["data"]["block_length"])
        if a.init == "teacher":  # sliced from the teacher, ranked on the study's calibration batch
            slice_teacher(student, data, "AutoModelForCausalLM", init_decoder_from_teacher, a.layer_pick)
        return student.to(device)

    def rate_per_item(self, data: DataConfig) -> int:
        return data.block_length  # tokens/s

    def as_student(self, teacher: Teacher, data: PreparedData) -> torch.nn.Module:
        return teacher.model

    @torch.no_grad()
    def on_policy_batch(self, student: torch.nn.Module, batch: Batch) -> Batch:
        """Each block's first half as a prompt and the student's own continuation of it
        (sampled at temperature 1) to the block's length, for on-policy distillation; the
        divergence is taken over the whole block."""
        tokens = batch.inputs["input_ids"]
        half = tokens.shape[1] // 2
        new = tokens.shape[1] - half
        training = student.training
        student.eval()
        with autocast(tokens.device):
            out = student.generate(
                input_ids=tokens[:, :half],
                attention_mask=torch.ones_like(tokens[:, :half]),
                do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                min_new_tokens=new, max_new_tokens=new,
                pad_token_id=student.config.eos_token_id,
            )  # fmt: skip
        student.train(training)
        return Batch({"input_ids": out[:, : tokens.shape[1]]})

    def forward(
        self, student: torch.nn.Module, batch: Batch, wanted: set[str], teacher: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        tokens = batch.inputs["input_ids"]  # (B, L)
        out = run_with_layers(student, layer_groups(wanted), input_ids=tokens)
        values = {"student_logits": out.logits[:, :-1], "labels": tokens[:, 1:], "mask": None}  # packed: no padding
        return values | student_layers(out, {"decoder": None}, wanted)

    def stacks(self, arch: dict[str, Any], data: PreparedData) -> dict[str, Stack]:
        a, c = DecoderArch.from_dict(arch), data.teacher_config()
        pick = a.layer_pick if a.init == "teacher" else "even"
        return {
            "decoder": Stack(a.layers, c.num_hidden_layers, a.hidden, c.hidden_size, a.heads, c.num_attention_heads, pick)
        }

    def evaluate(self, student: torch.nn.Module, data: PreparedData, split: str, device: torch.device) -> dict[str, float]:
        return evaluate_lm(student, data, split, device=device)

    def size(self, student: torch.nn.Module, data: PreparedData, device: torch.device) -> dict[str, float]:
        return size_metrics(student, data.meta["data"]["block_length"], device=device)

    def param_counts(self, arch: dict[str, Any], data: PreparedData) -> dict[str, int]:
        vocab = data.teacher_config().vocab_size
        return DecoderArch.from_dict(arch).param_counts(vocab, data.meta["data"]["block_length"])

    def describe(self, arch: dict[str, Any]) -> str:
        return DecoderArch.from_dict(arch).short()

    # -- the runtime (`distill.runtime`)
    def onnx_graphs(self, student: torch.nn.Module, data: PreparedData) -> dict[str, OnnxGraph]:
        """One graph of the next-token logits with the KV cache in and out (a cache of
        length 0 for the prompt)."""
        model = WithCache(student)
        ids = torch.ones(2, 3, dtype=torch.long)
        past = tuple(torch.zeros(2, heads, 4, width) for heads, width in model.shapes for _ in range(2))
        mask, positions = torch.ones(2, 7, dtype=torch.long), torch.arange(4, 7).expand(2, 3)
        batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
        cached, total = torch.export.Dim("past"), torch.export.Dim("total")
        names, presents = cache_names(len(model.shapes))
        return {
            "model": OnnxGraph(
                model,
                (ids, mask, positions, past),
                ["input_ids", "attention_mask", "position_ids", *names],
                ["logits", *presents],
                ({0: batch, 1: tokens}, {0: batch, 1: total}, {0: batch, 1: tokens}, tuple({0: batch, 2: cached} for _ in past)),
            )
        }

    def runtime_speed(self, sessions: dict[str, Any], data: PreparedData) -> dict[str, float]:
        """Greedy generation with the KV cache after a prompt of half a block: the time to the
        first token, per token after it at batch 1, and tokens/s at batch 8."""
        session, block = sessions["model"], data.meta["data"]["block_length"]
        prompt = max(1, block // 2)
        new = max(1, min(NEW_TOKENS, block - prompt))
        cpu = torch.device("cpu")

        def generate(batch: int, steps: int) -> Any:
            cache = KvCache(session, batch)
            step = np.ones((batch, prompt), np.int64)
            for _ in range(steps + 1):
                end = cache.length + step.shape[1]
                positions = np.arange(cache.length, end, dtype=np.int64)[None].repeat(batch, 0)
                logits = cache.run({"input_ids": step, "attention_mask": np.ones((batch, end), np.int64), "position_ids": positions})
                step = logits[:, -1:].argmax(-1).astype(np.int64)
            return step

        first = median_ms(lambda: generate(1, 0), cpu)
        return {
            "first_token_ms": first,
            "latency_ms": (median_ms(lambda: generate(1, new), cpu, repeats=3) - first) / new,
            "tokens_per_s": SPEED_BATCH * new / (median_ms(lambda: generate(SPEED_BATCH, new), cpu, repeats=3) / 1000.0),
        }

    def runtime_evaluate(self, sessions: dict[str, Any], data: PreparedData, split: str) -> dict[str, float]:
        session = sessions["model"]
        vocab = data.teacher_config().vocab_size

        def chunks(tokens: torch.Tensor) -> Any:
            b, n = tokens.shape
            cache = KvCache(session, b)
            positions = np.arange(n, dtype=np.int64)[None].repeat(b, 0)
            logits = cache.run({"input_ids": tokens.numpy(), "attention_mask": np.ones((b, n), np.int64), "position_ids": positions})
            return [(slice(0, b * (n - 1)), torch.from_numpy(logits[:, :-1]).flatten(0, 1))]

        return lm_scores(chunks, data, split, rows_within(data.array(f"{split}_blocks").shape[1], vocab, 16), torch.device("cpu"))

    def export(self, student: torch.nn.Module, data: PreparedData, folder: Path) -> None:
        """save_pretrained (safetensors), the teacher's tokenizer and a generation config."""
        from transformers import AutoTokenizer, GenerationConfig

        student.cpu().save_pretrained(folder)
        AutoTokenizer.from_pretrained(data.path / "teacher").save_pretrained(folder)
        config = student.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=pad,
            max_new_tokens=64,
            do_sample=True,
            top_p=0.95,
            temperature=0.8,
        ).save_pretrained(folder)


def encoder_only(config: Any) -> bool:
    """Whether `config` is of a bidirectional encoder (BERT, RoBERTa, ...) that is not set up
    as a decoder: transformers gives some of them a causal-LM head, which predicts nothing
    without `is_decoder`. Decoder-only families have no masked-LM head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module, data: PreparedData, split: str, *, batch_size: int = 16, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Perplexity on the blocks of `split`, the KL to the teacher over its cached top-k + tail
    (at temperature 1) and the top-1 agreement with the teacher."""
    device = torch.device(device)
    model.to(device).eval()
    rows = rows_within(data.array(f"{split}_blocks").shape[1], model.config.vocab_size, batch_size)  # a large vocabulary: fewer rows
    return lm_scores(lambda tokens: next_token_chunks(model, set(), tokens)[1], data, split, rows, device)


def lm_scores(chunks: Any, data: PreparedData, split: str, batch_size: int, device: torch.device) -> dict[str, float]:
    """`evaluate_lm`'s scores of a model whose next-token logits of blocks (B, L) are
    `chunks(blocks)`: (positions of the B x (L - 1) flattened, fp32 logits (n, V)) pairs."""
    blocks = data.array(f"{split}_blocks")
    t_logp_all, t_idx_all = data.array(f"{split}_teacher_logprobs"), data.array(f"{split}_teacher_indices")
    nll = kl = agree = 0.0
    count = 0
    for start in range(0, len(blocks), batch_size):
        tokens = torch.from_numpy(blocks[start : start + batch_size].astype(np.int64)).to(device)
        labels = tokens[:, 1:].flatten()
        t_logp = torch.from_numpy(np.array(t_logp_all[start : start + batch_size])).to(device).flatten(0, 1)
        t_idx = torch.from_numpy(np.array(t_idx_all[start : start + batch_size])).to(device).flatten(0, 1)
        for pos, logits in chunks(tokens):  # (n, V) at a time
            nll += F.cross_entropy(logits, labels[pos], reduction="sum").item()
            kl += topk_kd_loss(logits[None], t_logp[pos][None], t_idx[pos][None], 1.0).item() * len(logits)
            agree += (logits.argmax(-1) == t_idx[pos, 0].long()).sum().item()
        count += len(labels)
    return {"perplexity": math.exp(nll / count), "kl": kl / count, "top1_agreement": agree / count}


class WithCache(torch.nn.Module):
    """A causal LM as a graph of plain tensors: the KV cache comes in as a key and a value
    (B, kv_heads, past, head_dim) per layer and goes out grown by the new tokens. `shapes`:
    (kv_heads, head_dim) of each layer's cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            cache = cache_of(model(input_ids=torch.ones(1, 2, dtype=torch.long), use_cache=True))
        self.shapes = [(layer.keys.shape[1], layer.keys.shape[3]) for layer in cache.layers]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(len(self.shapes)):
            cache.update(past[2 * i], past[2 * i + 1], i)
        given = {cache_argument(self.model): cache}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **given)
        return (out.logits, *(t for layer in cache_of(out).layers for t in (layer.keys, layer.values)))


def latency_ms_per_token(model: torch.nn.Module, seq_len: int, *, device: torch.device | str = "cpu") -> float:
    """Median time of a batch-1 forward pass over `seq_len` tokens, divided by `seq_len`."""
    device = torch.device(device)
    model.to(device).eval()
    tokens = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    return median_ms(lambda: model(input_ids=tokens), device) / seq_len


def size_metrics(model: Any, seq_len: int, *, device: torch.device | str = "cpu") -> dict[str, float]:
    """Parameters, latency (ms/token at batch 1) and peak memory (MiB) on `device`."""
    return {
        **param_counts(model),
        "latency_ms": latency_ms_per_token(model, seq_len, device=device),
        "peak_memory_mb": peak_memory_mb(model, seq_len, device=device),
    }


def lm_loss(model: torch.nn.Module, blocks: np.ndarray, device: torch.device) -> Any:
    """Plain next-token cross-entropy on the blocks at the given indices (no teacher)."""

    def loss(idx: np.ndarray) -> torch.Tensor:
        tokens = torch.from_numpy(blocks[idx].astype(np.int64)).to(device)
        out = TASK.forward(model, Batch({"input_ids": tokens}), set(), {})
        return next_token_ce(out["student_logits"], out["labels"])

    return loss


def _aligned_outputs(teacher: Teacher, tokens: torch.Tensor, params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The "ranked" group of a teacher of another tokenizer on student blocks (B, L): each
    block's text in the teacher's own tokens (its documents joined by the teacher's EOS, after
    its BOS where it puts one), and at each student position (predicting the block's next
    token) the teacher's distribution before the teacher token that starts there."""
    most = getattr(teacher.model.config, "max_position_embeddings", None)
    runs, where = [], []
    for row in tokens.tolist():
        ids, index = align_to_teacher(teacher.student_tokenizer, row, teacher.tokenizer, most, bos=True)
        runs.append(ids or [teacher.tokenizer.eos_token_id or 0])
        # student position p predicts token p + 1: the teacher's position before the token aligned with it
        where.append([k - 1 if k >= 1 else -1 for k in index[1:]])
    ids, mask = padded_rows(runs, teacher.tokenizer, tokens.device)
    positions = torch.tensor(where, device=tokens.device)

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = teacher.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        return ranked_at(logits, inputs["positions"], params)

    inputs = {"input_ids": ids, "attention_mask": mask, "positions": positions}
    return by_rows(run, inputs, teacher.model.config.vocab_size, ids.shape[1])


def train_teacher(cfg: TeacherTraining, texts: list[str], out: Path, block_length: int = 128, seed: int = 0) -> None:
    """Train a tokenizer and a decoder (GPT-2 unless `cfg.family` names another of
    `search_spaces.FAMILIES`) on `texts` and `save_pretrained` both into `out`."""
    from transformers import PretrainedConfig

    logger.info("training the teacher into %s (%d steps); later runs reuse it", out, cfg.steps)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    blocks = pack(texts, tokenizer, block_length)
    arch = DecoderArch(cfg.family or "gpt2", cfg.layers, cfg.heads, cfg.heads, cfg.hidden // cfg.heads, 4.0, True)
    vocab = PretrainedConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(seed)
    model = build_model(arch, vocab, block_length)
    cpu = torch.device("cpu")
    train_and_save(model, tokenizer, lm_loss(model, blocks, cpu), np.full(len(blocks), block_length), cfg, out, seed)


TASK = CausalLM()
