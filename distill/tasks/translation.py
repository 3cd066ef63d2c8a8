"""Translation students: encoder-decoder students (Marian-style, T5-style) of an
`AutoModelForSeq2SeqLM` teacher, sharing its tokenizer, distilled on sentence pairs with the
teacher's top-k distribution under teacher forcing (word-level KD) and cross-entropy on the
reference, and scored by what they generate: BLEU and chrF from sacrebleu, beside the KL to
the teacher under teacher forcing."""

from __future__ import annotations

import dataclasses
import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.cache import PreparedData
from distill.data import DataSplits
from distill.errors import InputError
from distill.evaluate import median_ms, param_counts, peak_memory_mb
from distill.intermediate import Stack, run_with_layers
from distill.losses import next_token_ce, topk_kd_loss
from distill.precision import autocast
from distill.runtime import KvCache, OnnxGraph, cache_argument, cache_names, cache_of, with_runtime
from distill.tasks.base import (
    GENERATED,
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
from distill.tasks.pairs import PairDataConfig, load_pairs
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
    padded_rows,
    ranked_arrays,
    ranked_at,
    slice_teacher,
    student_layers,
    topk_arrays,
    trimmed,
)
from distill.teachers import TeacherSource, TeacherTraining, byte_level_bpe, train_and_save
from search_spaces import (
    SEQ2SEQ_FAMILIES,
    Seq2SeqArch,
    Seq2SeqSpace,
    build_seq2seq,
    init_seq2seq_from_teacher,
    seq2seq_importance,
    target_vocab,
    teacher_shape,
)

logger = logging.getLogger(__name__)

STACKS = ("encoder", "decoder")

SPEED_BATCH = 32
QUALITY = (
    Metric("bleu", "quality", "max", "{:.2f}", "BLEU against the references (sacrebleu)"),
    Metric("chrf", "quality", "max", "{:.2f}", "chrF against the references (sacrebleu)"),
    Metric("kl", "quality", "min", "{:.4f}", "KL to the teacher under teacher forcing, nats/token (lower is better)"),
)
SPEED = (
    Metric("latency_ms", "size", "min", "{:.2f}", "generation latency, ms/sentence (batch 1)"),
    Metric("sentences_per_s", "size", "max", "{:.1f}", f"sentences/s generated at batch {SPEED_BATCH}"),
)
METRICS = with_runtime(
    (*QUALITY, PARAMS, NON_EMBEDDING_PARAMS, *SPEED, PEAK_MEMORY),
    tuple(dataclasses.replace(m, label=m.label + ", greedy with the KV cache") for m in SPEED),
    greedy=("bleu", "chrf"),
)

USAGE = """from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForSeq2SeqLM.from_pretrained("{path}")
batch = tokenizer(["Germany", "the Republic of Austria"], return_tensors="pt", padding=True)
out = model.generate(**batch)  # the decoding the scores were measured with: generation_config.json
print(tokenizer.batch_decode(out, skip_special_tokens=True))"""

RUNTIME_USAGE = """import json
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("{path}/tokenizer.json")
settings = json.load(open("{path}/generation_config.json"))
eos = settings["eos_token_id"] if isinstance(settings["eos_token_id"], list) else [settings["eos_token_id"]]
encoder = ort.InferenceSession("{path}/onnx/encoder{file}")
decoder = ort.InferenceSession("{path}/onnx/decoder{file}")
outputs = [o.name for o in decoder.get_outputs()]
source = np.array([tokenizer.encode("Germany").ids], dtype=np.int64)
mask = np.ones_like(source)
states = encoder.run(None, {{"input_ids": source, "attention_mask": mask}})[0]
# the decoder's KV cache: empty at first, then what the last step returned
past = {{i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        for i in decoder.get_inputs() if i.name.startswith("past_key_values.")}}
tokens = [settings["decoder_start_token_id"]]
for _ in range(settings["max_new_tokens"]):  # greedy
    feeds = {{"input_ids": np.array([tokens[-1:]], dtype=np.int64), "encoder_hidden_states": states, "encoder_attention_mask": mask}}
    values = dict(zip(outputs, decoder.run(None, {{**feeds, **past}})))
    past = {{name: values[name.replace("past_key_values", "present")] for name in past}}
    logits = values["logits"][0, -1]
    for banned in settings.get("bad_words_ids") or []:
        logits[banned] = -np.inf
    first = len(tokens) == 1 and settings.get("forced_bos_token_id") is not None  # a multilingual teacher's language
    tokens.append(settings["forced_bos_token_id"] if first else int(logits.argmax()))
    if tokens[-1] in eos:
        break
print(tokenizer.decode(tokens, skip_special_tokens=True))"""


@dataclasses.dataclass(frozen=True)
class TranslationLossParams(TopKLossParams):
    """The parameters of a translation loss besides the term weights."""

    sequence_beams: int = 5
    """beams of the teacher's translations of the training sources that sequence-level KD
    (`sequence_kd`) trains on (generated once per study)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequence_beams < 1:
            raise ValueError(f"sequence_beams: must be >= 1, got {self.sequence_beams}")


def encode_side(tokenizer: Any, texts: list[str], max_length: int, target: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, max_length) int32 and mask (N, max_length) int8 of one side, cut to
    `max_length`, each sentence holding an EOS: added at the end where the tokenizer put none
    (Marian's and T5's end with it; mBART's put a language code after it)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    kwargs = {"text_target": texts} if target else {"text": texts}
    seqs = tokenizer(**kwargs, truncation=True, max_length=max_length)["input_ids"]
    ids = np.full((len(texts), max_length), pad, dtype=np.int32)
    mask = np.zeros((len(texts), max_length), dtype=np.int8)
    for i, seq in enumerate(seqs):
        if eos is not None and eos not in seq:
            seq = [*seq[: max_length - 1], eos]
        ids[i, : len(seq)], mask[i, : len(seq)] = seq, 1
    return ids, mask


def decoder_inputs(model: Any, labels: torch.Tensor) -> torch.Tensor:
    """Teacher forcing: the reference shifted right, as the model itself shifts its labels
    (behind the decoder's start token; mBART wraps its language code to the front)."""
    shift = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if shift is not None:
        return shift(labels=labels)
    start = model.config.decoder_start_token_id
    return torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)


class Translation(Task):
    name = "translation"
    data_config = PairDataConfig
    space = Seq2SeqSpace
    metrics = METRICS
    loss_params = TranslationLossParams
    default_weights = {"forward_kl": 1.0, "ce": 0.5}
    outputs = {
        "topk": ("teacher_logprobs", "teacher_indices"),
        "logits": ("teacher_logits",),
        "confidence": ("teacher_entropy", "teacher_nll"),
        "ranked": ("teacher_ranked", "teacher_aligned"),
        "sequences": ("teacher_sequence", "teacher_sequence_mask"),
        "hidden_states": ("teacher_encoder_hidden", "teacher_decoder_hidden"),
        "attentions": ("teacher_encoder_attentions", "teacher_decoder_attentions"),
    }
    values = frozenset({"student_logits", "labels", "mask", "student_sequence_logits", "sequence_labels", *LAYER_VALUES})
    eval_outputs = ("topk",)
    held_out_params = {"temperature": 1.0}  # held-out KL against the plain distribution
    teacher_batch = 32
    card = CardParts(
        "transformers", "translation", USAGE, "pairs", "sent_s", tokenizer="the teacher's tokenizer", runtime_usage=RUNTIME_USAGE
    )
    eval_keys, eval_limit = PairDataConfig.EVAL_KEYS, PairDataConfig.EVAL_LIMIT
    trains_teacher = True
    samples_on_policy = True

    # -- the teacher and the data, once per study
    def scoring(self, data: PairDataConfig) -> dict[str, str]:
        """sacrebleu's signatures of the BLEU and chrF the study reports (stored with it); BLEU
        tokenizes as sacrebleu does for the target language (Chinese, Japanese and Korean
        apart from the rest)."""
        try:
            return score(["-"], ["-"], data.pair[1])["signatures"]  # sacrebleu signs a metric once it has scored
        except (ImportError, RuntimeError):  # Japanese and Korean need MeCab
            raise InputError(
                f"data.pair: BLEU into {data.pair[1]!r} needs the tokenizer that sacrebleu installs as an extra "
                f"(pip install 'sacrebleu[ja]' or 'sacrebleu[ko]')"
            ) from None

    def rescore(self, references: str, outputs: str, data: dict[str, Any]) -> str:
        """The sacrebleu command line that recomputes the stored BLEU and chrF of `outputs`."""
        source, target = (bleu_language(code) for code in data["pair"])
        return f"sacrebleu {references} -i {outputs} -m bleu chrf -l {source}-{target}"

    def load_data(self, data: PairDataConfig, base_dir: Path, seed: int) -> DataSplits:
        splits, counts = load_pairs(data, base_dir, seed)
        return DataSplits(splits, {"pairs": counts})

    def load_teacher(self, source: TeacherSource) -> Teacher:
        config = source.config()
        if not getattr(config, "is_encoder_decoder", False):
            raise InputError(
                f"teacher.model: translation students learn from an encoder-decoder teacher "
                f"(AutoModelForSeq2SeqLM: Marian, T5, BART, ...); {source.name!r} is a {config.model_type!r} model"
            )
        model, tokenizer = source.load("AutoModelForSeq2SeqLM")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return Teacher(model, tokenizer, source)

    def train_teacher(
        self, cfg: TeacherTraining, pairs: list[tuple[str, str]], out: Path, data: PairDataConfig
    ) -> None:
        """Train a tokenizer and a small Marian model on `pairs` and `save_pretrained` both into `out`."""
        if cfg.family not in ("", "marian"):
            raise InputError(f"teacher.train.family: translation teachers trained here are Marian models; got {cfg.family!r}")
        train_teacher(cfg, pairs, out, data.max_length)

    def check_space(self, space: Seq2SeqSpace, teacher_config: Any) -> None:
        check_space_fits(space, teacher_config)

    def encode(
        self, pairs: list[tuple[str, str]], teacher: Teacher, data: PairDataConfig, split: str
    ) -> dict[str, np.ndarray]:
        if data.limit(split):
            pairs = pairs[: data.limit(split)]
        if not pairs:
            raise InputError(f"data: the {split} split holds no pair; give more pairs or a larger {split} share")
        check_positions(teacher.model.config, data.max_length, "data.max_length")
        set_languages(teacher, data)
        sources = [data.source_prefix + s for s, _ in pairs]
        src_ids, src_mask = encode_side(teacher.tokenizer, sources, data.max_length, target=False)
        tgt_ids, tgt_mask = encode_side(teacher.tokenizer, [t for _, t in pairs], data.max_length, target=True)
        out = {"src_ids": src_ids, "src_mask": src_mask, "tgt_ids": tgt_ids, "tgt_mask": tgt_mask}
        if split != "train":  # what is translated and what that is scored against, one line each as a file holds it
            out["sources"] = np.array([" ".join(s.split()) for s in sources], dtype=str)
            out["references"] = np.array([" ".join(t.split()) for _, t in pairs], dtype=str)
        return out

    def lengths(self, data: PreparedData, split: str) -> np.ndarray:
        return np.asarray(data.array(f"{split}_tgt_mask")).sum(1)

    def batch(self, data: PreparedData, split: str, idx: np.ndarray, device: torch.device) -> Batch:
        src, src_mask = trimmed(data.array(f"{split}_src_ids")[idx], data.array(f"{split}_src_mask")[idx], device)
        tgt, tgt_mask = trimmed(data.array(f"{split}_tgt_ids")[idx], data.array(f"{split}_tgt_mask")[idx], device)
        inputs = {"input_ids": src, "attention_mask": src_mask, "labels": tgt, "decoder_attention_mask": tgt_mask}
        # "max_tokens": the study's sentence length, the longest a generated translation may be
        lengths = {"tokens": tgt.shape[1], "source": src.shape[1], "max_tokens": data.array(f"{split}_tgt_ids").shape[1]}
        return Batch(inputs, lengths)

    def output_arrays(
        self, groups: set[str], teacher: Teacher, params: dict[str, Any], data: PairDataConfig
    ) -> dict[str, OutputArray]:
        arrays = {}
        if "topk" in groups:  # per target position of the reference
            arrays |= topk_arrays(target_vocab(teacher.model.config), params, data.max_length, {0: "tokens"})
        arrays |= confidence_arrays(groups, data.max_length, {0: "tokens"})
        arrays |= ranked_arrays(groups, params, data.max_length, {0: "tokens"})
        if "sequences" in groups:  # the teacher's translation, whole (its length is not the reference's)
            arrays["teacher_sequence"] = OutputArray((data.max_length,), "int32")
            arrays["teacher_sequence_mask"] = OutputArray((data.max_length,), "int8")
        config = teacher.model.config
        shape = teacher_shape(config)
        stacks = {
            "encoder": (shape["encoder_layers"], shape["heads"], shape["hidden"], data.max_length, "source"),
            "decoder": (shape["decoder_layers"], decoder_heads(config), shape["hidden"], data.max_length, "tokens"),
        }
        return arrays | layer_arrays(groups, stacks)

    def teacher_outputs(
        self, teacher: Teacher, batch: Batch, groups: set[str], params: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        if teacher.student_tokenizer is not None:
            return _aligned_outputs(teacher, batch, params)
        out = {}
        if groups & {"topk", "logits", "confidence", *LAYER_GROUPS}:

            def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                forced = _forced(teacher.model, Batch(inputs, batch.lengths), groups)
                return logit_outputs(forced.logits, groups, params, inputs["labels"]) | layer_outputs(forced, STACKS, groups)

            labels = batch.inputs["labels"]
            out = by_rows(run, batch.inputs, teacher.model.config.vocab_size, labels.shape[1])
        if "sequences" in groups:
            out |= translations(teacher.model, batch, params["sequence_beams"])
        return out

    def importance(self, teacher: Teacher, data: PreparedData, device: torch.device) -> dict[str, Any] | None:
        if teacher.model.config.model_type not in SEQ2SEQ_FAMILIES:
            return None  # no slicing for other families
        batch = self.batch(data, "train", np.arange(min(16, len(self.lengths(data, "train")))), device)
        return seq2seq_importance(teacher.model, _forced_inputs(teacher.model, batch))

    # -- students
    def build_student(self, arch: dict[str, Any], data: PreparedData, device: torch.device) -> torch.nn.Module:
        a = Seq2SeqArch.from_dict(arch)
        student = build_seq2seq(a, data.teacher_config(), data.meta["data"]["max_length"])
        if a.init == "teacher":  # sliced from the teacher, ranked on the study's calibration pairs
            slice_teacher(student, data, "AutoModelForSeq2SeqLM", init_seq2seq_from_teacher, a.layer_pick)
        return student.to(device)

    def as_student(self, teacher: Teacher, data: PreparedData) -> torch.nn.Module:
        return teacher.model

    def stacks(self, arch: dict[str, Any], data: PreparedData) -> dict[str, Stack]:
        a, config = Seq2SeqArch.from_dict(arch), data.teacher_config()
        t = teacher_shape(config)
        pick = a.layer_pick if a.init == "teacher" else "even"
        return {
            "encoder": Stack(a.encoder_layers, t["encoder_layers"], a.hidden, t["hidden"], a.heads, t["heads"], pick),
            "decoder": Stack(a.decoder_layers, t["decoder_layers"], a.hidden, t["hidden"], a.heads, decoder_heads(config), pick),
        }

    def forward(
        self, student: torch.nn.Module, batch: Batch, wanted: set[str], teacher: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """The student teacher-forced on the reference (`student_logits`, `labels` -100 at
        padding) and, for sequence-level KD, on the teacher's translation of the same sources
        (`student_sequence_logits`, `sequence_labels`); each only when a term wants it."""
        out: dict[str, Any] = {}
        if wanted & {"student_logits", "labels", "mask", *LAYER_VALUES}:
            mask = batch.inputs["decoder_attention_mask"]
            labels = batch.inputs["labels"].masked_fill(mask == 0, -100)
            forced = _forced(student, batch, layer_groups(wanted))
            out |= {"student_logits": forced.logits, "labels": labels, "mask": mask}
            out |= student_layers(forced, {"encoder": batch.inputs["attention_mask"], "decoder": mask}, wanted)
        if wanted & {"student_sequence_logits", "sequence_labels"}:
            length = max(1, int(teacher["teacher_sequence_mask"].sum(1).max()))  # the longest translation
            seq = teacher["teacher_sequence"][:, :length].long()
            mask = teacher["teacher_sequence_mask"][:, :length].long()
            on_teacher = Batch({**batch.inputs, "labels": seq, "decoder_attention_mask": mask})
            out |= {
                "student_sequence_logits": _forced_logits(student, on_teacher),
                "sequence_labels": seq.masked_fill(mask == 0, -100),
            }
        return out

    @torch.no_grad()
    def on_policy_batch(self, student: torch.nn.Module, batch: Batch) -> Batch:
        """The batch's sources with the student's own translations of them (sampled) as the
        targets, for on-policy distillation."""
        training = student.training
        student.eval()
        out = translations(student, batch, beams=1, sample=True)
        student.train(training)
        length = max(1, int(out["teacher_sequence_mask"].sum(1).max()))
        labels = out["teacher_sequence"][:, :length].long()
        mask = out["teacher_sequence_mask"][:, :length].long()
        inputs = {**batch.inputs, "labels": labels, "decoder_attention_mask": mask}
        return Batch(inputs, {**batch.lengths, "tokens": length})

    def evaluate(
        self, student: torch.nn.Module, data: PreparedData, split: str, device: torch.device
    ) -> dict[str, Any]:
        return evaluate_translation(student, data, split, device)

    def size(self, student: torch.nn.Module, data: PreparedData, device: torch.device) -> dict[str, float]:
        """Parameters; generation latency per sentence at batch 1 and sentences/s at batch
        32, a fixed number of new tokens (the held-out references' median length) from the
        held-out sources; peak memory of a teacher-forced pass."""
        student.eval()
        new = max(1, int(statistics.median(self.lengths(data, "eval"))))
        study = study_decoding(data)
        settings = decoding(study, study.num_beams, new)
        settings.min_new_tokens = new  # every sentence exactly `new` tokens: speed, not quality
        src, mask = trimmed(data.array("eval_src_ids")[:SPEED_BATCH], data.array("eval_src_mask")[:SPEED_BATCH], device)
        reps = -(-SPEED_BATCH // len(src))
        src, mask = src.repeat(reps, 1)[:SPEED_BATCH], mask.repeat(reps, 1)[:SPEED_BATCH]

        def run(n: int) -> Any:
            return lambda: student.generate(input_ids=src[:n], attention_mask=mask[:n], generation_config=settings)

        inputs = _forced_inputs(student, self.batch(data, "eval", np.arange(1), device))
        return {
            **param_counts(student),
            "latency_ms": median_ms(run(1), device),
            "sentences_per_s": SPEED_BATCH / (median_ms(run(SPEED_BATCH), device, repeats=3) / 1000.0),
            "peak_memory_mb": peak_memory_mb(student, 0, device=device, inputs=inputs),
        }

    def param_counts(self, arch: dict[str, Any], data: PreparedData) -> dict[str, int]:
        config = data.teacher_config()
        a = Seq2SeqArch.from_dict(arch)
        feed_forward = config.feed_forward_proj if a.family == "t5" and config.model_type == "t5" else "relu"
        return a.param_counts(config.vocab_size, data.meta["data"]["max_length"], feed_forward, target_vocab(config))

    def describe(self, arch: dict[str, Any]) -> str:
        return Seq2SeqArch.from_dict(arch).short()

    # -- the runtime (`distill.runtime`)
    def onnx_graphs(self, student: torch.nn.Module, data: PreparedData) -> dict[str, OnnxGraph]:
        """The encoder (sources to their states), and the decoder (the next-token logits from
        the tokens so far, the encoder's states and the self-attention KV cache in and out;
        cross-attention reads the states at every step)."""
        decoder = DecoderWithCache(student)
        ids, mask = torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
        states = torch.zeros(2, 5, student.config.d_model)
        past = tuple(torch.zeros(2, heads, 4, width) for heads, width in decoder.shapes for _ in range(2))
        batch, source, tokens, cached = (torch.export.Dim(n) for n in ("batch", "source", "tokens", "past"))
        names, presents = cache_names(len(decoder.shapes))
        return {
            "encoder": OnnxGraph(
                Encoder(student), (ids, mask), ["input_ids", "attention_mask"], ["last_hidden_state"],
                ({0: batch, 1: source}, {0: batch, 1: source}),
            ),
            "decoder": OnnxGraph(
                decoder,
                (ids[:, :3], states, mask, past),
                ["input_ids", "encoder_hidden_states", "encoder_attention_mask", *names],
                ["logits", *presents],
                ({0: batch, 1: tokens}, {0: batch, 1: source}, {0: batch, 1: source}, tuple({0: batch, 2: cached} for _ in past)),
            ),
        }  # fmt: skip

    def runtime_speed(self, sessions: dict[str, Any], data: PreparedData) -> dict[str, float]:
        """As `size`: a fixed number of new tokens (the held-out references' median length)
        from the held-out sources, greedy, per sentence at batch 1 and sentences/s at batch 32."""
        new = max(1, int(statistics.median(self.lengths(data, "eval"))))
        settings = study_decoding(data)
        ids, mask = data.array("eval_src_ids")[:SPEED_BATCH], data.array("eval_src_mask")[:SPEED_BATCH]
        reps = -(-SPEED_BATCH // len(ids))
        ids, mask = np.tile(ids, (reps, 1))[:SPEED_BATCH], np.tile(mask, (reps, 1))[:SPEED_BATCH]
        cpu = torch.device("cpu")

        def run(n: int) -> Any:
            src, src_mask = trimmed(ids[:n], mask[:n], cpu)
            return lambda: runtime_greedy(sessions, src.numpy(), src_mask.numpy(), settings, new, exactly=True)

        return {
            "latency_ms": median_ms(run(1), cpu),
            "sentences_per_s": SPEED_BATCH / (median_ms(run(SPEED_BATCH), cpu, repeats=3) / 1000.0),
        }

    def runtime_evaluate(self, sessions: dict[str, Any], data: PreparedData, split: str) -> dict[str, Any]:
        settings = study_decoding(data)
        cpu = torch.device("cpu")
        ids, masks = data.array(f"{split}_src_ids"), data.array(f"{split}_src_mask")
        tokenizer, generated = data.teacher_tokenizer(), []
        for start in range(0, len(ids), SPEED_BATCH):
            src, mask = trimmed(ids[start : start + SPEED_BATCH], masks[start : start + SPEED_BATCH], cpu)
            out = runtime_greedy(sessions, src.numpy(), mask.numpy(), settings, data.meta["data"]["max_length"])
            generated += tokenizer.batch_decode(out.tolist(), skip_special_tokens=True)

        def forced_logits(batch: Batch) -> torch.Tensor:
            i = batch.inputs
            states = sessions["encoder"].run(None, {"input_ids": i["input_ids"].numpy(), "attention_mask": i["attention_mask"].numpy()})[0]
            labels = i["labels"]
            shifted = torch.cat([torch.full_like(labels[:, :1], settings.decoder_start_token_id), labels[:, :-1]], dim=1)
            feeds = {"input_ids": shifted.numpy(), "encoder_hidden_states": states, "encoder_attention_mask": i["attention_mask"].numpy()}
            return torch.from_numpy(KvCache(sessions["decoder"], len(labels)).run(feeds))

        return translation_scores([" ".join(h.split()) for h in generated], forced_logits, data, split, cpu)

    def export(self, student: torch.nn.Module, data: PreparedData, folder: Path) -> None:
        """save_pretrained (safetensors), the teacher's tokenizer, and a generation config with
        the decoding the scores were measured with."""

        student.cpu().save_pretrained(folder)
        data.teacher_tokenizer().save_pretrained(folder)
        study_decoding(data).save_pretrained(folder)


def set_languages(teacher: Teacher, data: PairDataConfig) -> None:
    """A multilingual teacher told the pair (`data.lang_codes`): its tokenizer's source and
    target languages, and its decoding starting with the target language's token (in place of
    any first token its own generation config forces; both are cached with the study)."""
    if not data.lang_codes:
        return
    tokenizer, settings = teacher.tokenizer, teacher.model.generation_config
    ids = []
    for code in data.lang_codes:
        by_code = getattr(tokenizer, "get_lang_id", None)  # M2M100: "de" is the token "__de__"
        try:
            token = by_code(code) if by_code is not None else tokenizer.convert_tokens_to_ids(code)
        except (KeyError, ValueError):
            token = None
        if token is None or token == tokenizer.unk_token_id:
            raise InputError(f"data.lang_codes: {code!r} is not a language code of the teacher's tokenizer")
        ids.append(token)
    tokenizer.src_lang, tokenizer.tgt_lang = data.lang_codes
    settings.forced_bos_token_id = ids[1]


def decoding(base: Any, beams: int, max_new_tokens: int) -> Any:
    """A copy of the generation config `base` (a teacher's own decoding: its special tokens, the
    tokens it bans or forces) that searches with `beams` beams (greedy with 1) for at most
    `max_new_tokens` tokens, without sampling."""
    import copy

    settings = copy.deepcopy(base)
    settings.update(num_beams=beams, max_new_tokens=max_new_tokens, max_length=None, do_sample=False, num_return_sequences=1)
    return settings


def study_decoding(data: PreparedData) -> Any:
    """How students and teacher are scored: the teacher's own generation config with the spec's
    beams, at most the study's sentence length (the longest reference the study keeps)."""
    cfg = data.meta["data"]
    return decoding(data.teacher_generation_config(), cfg["beams"], cfg["max_length"])  # a copy


@torch.no_grad()
def translations(model: Any, batch: Batch, beams: int, sample: bool = False) -> dict[str, torch.Tensor]:
    """The model's beam-search translations of the batch's sources (or, with `sample`, one
    drawn from its distribution at temperature 1), as targets to train on: `teacher_sequence`
    (B, L) token ids without the decoder's start token, ending with EOS (unless cut at the
    study's sentence length), and `teacher_sequence_mask` (B, L), 1 up to and including the
    first EOS."""
    i = batch.inputs
    settings = decoding(model.generation_config, beams, batch.lengths["max_tokens"])  # the teacher's own, with these beams
    if sample:
        settings.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    with autocast(i["input_ids"].device):
        seq = model.generate(input_ids=i["input_ids"], attention_mask=i["attention_mask"], generation_config=settings)
    seq = seq[:, 1:]  # the decoder's start token
    eos = settings.eos_token_id if isinstance(settings.eos_token_id, list) else [settings.eos_token_id]
    ended = torch.isin(seq, torch.tensor(eos, device=seq.device)).int()
    after_eos = (ended.cumsum(1) - ended) > 0  # positions behind the first EOS
    return {"teacher_sequence": seq.int(), "teacher_sequence_mask": (~after_eos).to(torch.int8)}


def _aligned_outputs(teacher: Teacher, batch: Batch, params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The "ranked" group of a teacher of another tokenizer on student pairs: each source and
    reference in the teacher's own tokens (each ending with its EOS, cut to its positions), the teacher
    teacher-forced on its reference, and at each student target position the teacher's
    distribution at the position of the teacher token that starts at the same character (the
    two EOS aligned with each other)."""
    student_tok, tok = teacher.student_tokenizer, teacher.tokenizer
    inputs, device = batch.inputs, batch.inputs["input_ids"].device
    eos = tok.eos_token_id
    most = getattr(teacher.model.config, "max_position_embeddings", None) or 10**9  # the teacher's positions
    sources, targets, where = [], [], []
    for src, src_mask, tgt, tgt_mask in zip(
        inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), inputs["labels"].tolist(), inputs["decoder_attention_mask"].tolist()
    ):
        text = student_tok.decode([t for t, m in zip(src, src_mask) if m], skip_special_tokens=True)
        ids = [t for t in tok(text)["input_ids"] if t != eos][: most - 1]
        sources.append([*ids, eos])
        real = [t for t, m in zip(tgt, tgt_mask) if m]  # ending with the student's EOS: the teacher's, aligned
        ids, index = align_to_teacher(student_tok, real, tok, most)  # its tokens past its positions: unaligned
        targets.append(ids)
        where.append(index + [-1] * (len(tgt) - len(real)))
    src_ids, src_mask = padded_rows(sources, tok, device)
    tgt_ids, tgt_mask = padded_rows(targets, tok, device)
    forced = {"input_ids": src_ids, "attention_mask": src_mask, "labels": tgt_ids, "decoder_attention_mask": tgt_mask}

    def run(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        positions = part.pop("positions")
        logits = _forced(teacher.model, Batch(part)).logits
        return ranked_at(logits, positions, params)

    inputs = {**forced, "positions": torch.tensor(where, device=device)}
    return by_rows(run, inputs, teacher.model.config.vocab_size, forced["labels"].shape[1])


def _forced_inputs(model: Any, batch: Batch) -> dict[str, torch.Tensor]:
    """The model inputs of teacher forcing on `batch`: sources, and the references shifted right."""
    i = batch.inputs
    return {
        "input_ids": i["input_ids"],
        "attention_mask": i["attention_mask"],
        "decoder_input_ids": decoder_inputs(model, i["labels"]),
        "decoder_attention_mask": i["decoder_attention_mask"],
    }


def _forced(model: Any, batch: Batch, layers: set[str] = frozenset()) -> Any:
    """The model teacher-forced on the batch's references, with the hidden states and
    attention maps of its stacks that the `layers` groups ask for."""
    return run_with_layers(model, layers, **_forced_inputs(model, batch))


def _forced_logits(model: Any, batch: Batch) -> torch.Tensor:
    return _forced(model, batch).logits


def decoder_heads(config: Any) -> int:
    """Attention heads of an encoder-decoder's decoder (a Marian/BART model may have its own)."""
    return getattr(config, "decoder_attention_heads", None) or teacher_shape(config)["heads"]


@torch.no_grad()
def generate(model: Any, data: PreparedData, split: str, device: torch.device, batch_size: int = 32) -> list[str]:
    """The model's translations of the sources of `split`, decoded with the teacher's tokenizer."""
    tokenizer = data.teacher_tokenizer()
    # The model's own config, not only the argument: generate() fills what the argument leaves
    # unset from it, and an export must decode as the scores were measured.
    model.generation_config = settings = study_decoding(data)
    model.to(device).eval()
    ids, masks = data.array(f"{split}_src_ids"), data.array(f"{split}_src_mask")
    out: list[str] = []
    for start in range(0, len(ids), batch_size):
        src, mask = trimmed(ids[start : start + batch_size], masks[start : start + batch_size], device)
        with autocast(device):
            generated = model.generate(input_ids=src, attention_mask=mask, generation_config=settings)
        out += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [" ".join(h.split()) for h in out]


def bleu_language(code: str) -> str:
    """The language of a code as sacrebleu's BLEU chooses its tokenizer by it: `zh_CN`, `zh-TW`
    and `zh` are all `zh`."""
    return code.replace("-", "_").split("_")[0]


def score(hypotheses: list[str], references: list[str], target: str | None = None) -> dict[str, Any]:
    """Corpus BLEU and chrF of sacrebleu with its default settings for the `target` language
    (as `sacrebleu -l <source>-<target>`), and their signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(trg_lang=bleu_language(target or "")), CHRF()
    return {
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
        "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
    }


@torch.no_grad()
def evaluate_translation(
    model: Any, data: PreparedData, split: str, device: torch.device, batch_size: int = 32
) -> dict[str, Any]:
    """BLEU and chrF of the model's translations of `split`, and its KL to the teacher under
    teacher forcing (against the cached top-k, at temperature 1)."""
    return translation_scores(generate(model, data, split, device, batch_size), lambda b: _forced_logits(model, b), data, split, device, batch_size)


def translation_scores(
    hypotheses: list[str], forced_logits: Any, data: PreparedData, split: str, device: torch.device, batch_size: int = 32
) -> dict[str, Any]:
    """`evaluate_translation`'s scores of the `hypotheses` of a model whose teacher-forced
    logits of a `Batch` are `forced_logits(batch)` (B, T, V)."""
    scores = score(hypotheses, [str(r) for r in data.array(f"{split}_references")], data.meta["data"]["pair"][1])
    kl = count = 0.0
    for start in range(0, len(hypotheses), batch_size):
        idx = np.arange(start, min(len(hypotheses), start + batch_size))
        batch = TASK.batch(data, split, idx, device)
        t = batch.lengths["tokens"]
        logits = forced_logits(batch).float()
        t_logp = torch.from_numpy(np.array(data.array(f"{split}_teacher_logprobs")[idx, :t])).to(device)
        t_idx = torch.from_numpy(np.array(data.array(f"{split}_teacher_indices")[idx, :t])).to(device)
        mask = batch.inputs["decoder_attention_mask"]
        n = mask.sum().item()
        kl += topk_kd_loss(logits, t_logp, t_idx, 1.0, mask).item() * n
        count += n
    return {"bleu": scores["bleu"], "chrf": scores["chrf"], "kl": kl / count, GENERATED: hypotheses}


class Encoder(torch.nn.Module):
    """An encoder-decoder's encoder as a graph: sources to their states (B, S, D)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class DecoderWithCache(torch.nn.Module):
    """An encoder-decoder's decoder and output head as a graph of plain tensors: the
    self-attention cache comes in as a key and a value (B, heads, past, head_dim) per layer
    and goes out grown by the new tokens; cross-attention is computed from the encoder's
    states at each call. `shapes`: (heads, head_dim) of each layer's cache."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        ones = torch.ones(1, 2, dtype=torch.long)
        with torch.no_grad():
            cache = cache_of(model(input_ids=ones, decoder_input_ids=ones, use_cache=True)).self_attention_cache
        self.shapes = [(layer.keys.shape[1], layer.keys.shape[3]) for layer in cache.layers]

    def forward(
        self, input_ids: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache, EncoderDecoderCache
        from transformers.modeling_outputs import BaseModelOutput

        own = DynamicCache()
        for i in range(len(self.shapes)):
            own.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=states),
            attention_mask=mask,
            decoder_input_ids=input_ids,
            use_cache=True,
            **{cache_argument(self.model): EncoderDecoderCache(own, DynamicCache())},
        )
        layers = cache_of(out).self_attention_cache.layers
        return (out.logits, *(t for layer in layers for t in (layer.keys, layer.values)))


def runtime_greedy(
    sessions: dict[str, Any], ids: np.ndarray, mask: np.ndarray, settings: Any, most: int, exactly: bool = False
) -> np.ndarray:
    """Greedy translations (B, <= most) of sources `ids` (B, S) by the runtime's encoder and
    decoder graphs, as `generate` decodes with `settings` and one beam: from the decoder's
    start token, the forced first token and banned tokens of `settings`, EOS forced at the
    last step where `settings` force one, padding after each row's EOS; with `exactly`, `most`
    tokens whatever comes (speed, not quality)."""
    states = sessions["encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
    b = len(ids)
    cache = KvCache(sessions["decoder"], b)
    eos = np.atleast_1d(np.asarray(settings.eos_token_id if settings.eos_token_id is not None else [], dtype=np.int64))
    banned = [w[0] for w in settings.bad_words_ids or () if len(w) == 1]
    pad = settings.pad_token_id if settings.pad_token_id is not None else (eos[0] if len(eos) else 0)
    step = np.full((b, 1), settings.decoder_start_token_id, np.int64)
    out, done = [], np.zeros(b, bool)
    for t in range(most):
        logits = cache.run({"input_ids": step, "encoder_hidden_states": states, "encoder_attention_mask": mask})[:, -1]
        logits[:, banned] = -np.inf
        token = logits.argmax(-1)
        if t == 0 and settings.forced_bos_token_id is not None:
            token[:] = settings.forced_bos_token_id
        if t == most - 1 and settings.forced_eos_token_id is not None and not exactly:
            token[:] = np.atleast_1d(settings.forced_eos_token_id)[0]
        token = np.where(done, pad, token)
        out.append(token)
        done |= np.isin(token, eos)
        if done.all() and not exactly:
            break
        step = token[:, None].astype(np.int64)
    return np.stack(out, 1)


def train_pair_tokenizer(pairs: list[tuple[str, str]], vocab_size: int) -> Any:
    """One BPE tokenizer for both languages, trained with `tokenizers` on the pairs' two sides
    (byte-level, so no character is unknown), that ends every sentence with `</s>` as Marian's does."""
    from tokenizers import decoders, processors
    from transformers import PreTrainedTokenizerFast

    pad, eos, unk = "<pad>", "</s>", "<unk>"
    tok = byte_level_bpe([side for pair in pairs for side in pair], vocab_size, [pad, eos, unk], unk, prefix_space=True)
    tok.decoder = decoders.Sequence([tok.decoder, decoders.Strip(" ", 1, 0)])  # without the space put before the first word
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token=unk)


def train_teacher(
    cfg: TeacherTraining, pairs: list[tuple[str, str]], out: Path, max_length: int, seed: int = 0
) -> None:
    """Train a tokenizer and a Marian encoder-decoder (cfg.layers each side) on `pairs` with
    cross-entropy on the references, and `save_pretrained` both into `out`."""
    from types import SimpleNamespace

    logger.info("training the teacher into %s (%d steps); later runs reuse it", out, cfg.steps)
    tokenizer = train_pair_tokenizer(pairs, cfg.vocab_size)
    src, src_mask = encode_side(tokenizer, [s for s, _ in pairs], max_length, target=False)
    tgt, tgt_mask = encode_side(tokenizer, [t for _, t in pairs], max_length, target=True)
    arch = Seq2SeqArch("marian", cfg.layers, cfg.layers, cfg.heads, cfg.hidden // cfg.heads, 4.0, True)
    ids = {"pad": tokenizer.pad_token_id, "eos": tokenizer.eos_token_id}
    vocab = SimpleNamespace(
        model_type="tokenizer",
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        decoder_start_token_id=ids["pad"],
    )
    torch.manual_seed(seed)
    model = build_seq2seq(arch, vocab, max_length)
    cpu = torch.device("cpu")

    def loss(idx: np.ndarray) -> torch.Tensor:
        s, sm = trimmed(src[idx], src_mask[idx], cpu)
        t, tm = trimmed(tgt[idx], tgt_mask[idx], cpu)
        batch = Batch({"input_ids": s, "attention_mask": sm, "labels": t, "decoder_attention_mask": tm})
        out = TASK.forward(model, batch, {"student_logits", "labels"}, {})
        return next_token_ce(out["student_logits"], out["labels"])

    greedy = decoding(model.generation_config, 1, max_length)  # how it decodes, saved with it
    train_and_save(model, tokenizer, loss, tgt_mask.sum(1), cfg, out, seed, extra=greedy.save_pretrained)


TASK = Translation()
