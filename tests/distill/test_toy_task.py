"""A task that lives only here, to show that a task is a module of its own: a tiny BERT
sequence classifier whose students learn the teacher's class distribution over sequences of
symbols (no text, no tokenizer). It is registered from this module and runs the contract every
registered task runs (`tests/distill/task_contract.py`); the spec, the extra evaluation sets and
the model card take what they need of it from the task itself."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill import prepare
from distill.cache import PreparedData
from distill.errors import InputError
from distill.evaluate import median_ms, param_counts
from distill.losses import topk_kd_loss
from distill.runtime import OnnxGraph, with_runtime
from distill.tasks import TASKS, get_task
from distill.tasks.base import NON_EMBEDDING_PARAMS, PARAMS, Batch, CardParts, Metric, OutputArray, Task, Teacher
from distill.teachers import TeacherSource
from tests.distill.task_contract import TaskContract, TaskSetup

AUTO_CLASS = "AutoModelForSequenceClassification"
SOURCES = ("uniform", "skewed")

USAGE = """import torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained("{path}")
print(model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.argmax(-1))"""

RUNTIME_USAGE = """import numpy as np
import onnxruntime as ort
session = ort.InferenceSession("{path}/onnx/model{file}")
print(session.run(None, {{"input_ids": np.array([[1, 2, 3, 4]], dtype=np.int64)}})[0].argmax(-1))"""

QUALITY = (
    Metric("agreement", "quality", "max", "{:.3f}", "agreement with the teacher's class"),
    Metric("kl", "quality", "min", "{:.4f}", "KL to the teacher's class distribution (lower is better)"),
)
SPEED = (Metric("latency_ms", "size", "min", "{:.3f}", "latency, ms/sequence (batch 1)"),)


@dataclasses.dataclass(frozen=True)
class SymbolData:
    """Sequences of symbols drawn with the study's seed (the `[data]` section of a toy study)."""

    source: str = "uniform"
    """how the symbols are drawn: uniform, or skewed (low symbols likelier)"""
    length: int = 12
    symbols: int = 16
    train_items: int = 64
    valid_items: int = 8
    eval_items: int = 16

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source: unknown {self.source!r}; allowed: {', '.join(SOURCES)}")


@dataclasses.dataclass(frozen=True)
class ClassifierSpace:
    """Students with the teacher's width: how many of its layers, how many heads, and whether
    they start as the teacher's first layers."""

    layers: tuple[int, ...] = (1, 2)
    heads: tuple[int, ...] = (2, 4)
    init: tuple[str, ...] = ("random", "teacher")

    def sample(self, trial: Any) -> dict[str, Any]:
        return {
            "layers": trial.suggest_categorical("layers", list(self.layers)),
            "heads": trial.suggest_categorical("heads", list(self.heads)),
            "init": trial.suggest_categorical("init", list(self.init)),
        }

    def check_teacher(self, config: Any) -> None:
        if max(self.layers) > config.num_hidden_layers:
            raise ValueError(f"layers: {max(self.layers)} exceeds the teacher's {config.num_hidden_layers} layers")
        for heads in self.heads:
            if config.hidden_size % heads:
                raise ValueError(f"heads: {heads} does not divide the teacher's width {config.hidden_size}")


@dataclasses.dataclass(frozen=True)
class ClassifierLossParams:
    temperature: float = 2.0
    top_k: int = 2
    """teacher log-probabilities kept per item (the rest of the classes is one tail bucket)"""


class SymbolClassifier(Task):
    name = "toy-classifier"
    data_config = SymbolData
    space = ClassifierSpace
    metrics = with_runtime((*QUALITY, PARAMS, NON_EMBEDDING_PARAMS), SPEED)
    loss_params = ClassifierLossParams
    default_weights = {"forward_kl": 1.0, "ce": 0.5}
    outputs = {"topk": ("teacher_logprobs", "teacher_indices")}
    values = frozenset({"student_logits", "labels"})
    eval_outputs = ("topk",)
    held_out_params = {"temperature": 1.0}
    teacher_batch = 32
    card = CardParts("transformers", "text-classification", USAGE, "sequences", "seq_s", runtime_usage=RUNTIME_USAGE)

    def load_data(self, data: SymbolData, base_dir: Path, seed: int) -> dict[str, list[Any]]:
        rng = np.random.default_rng(seed)
        weights = 1.0 / np.arange(1, data.symbols + 1) if data.source == "skewed" else np.ones(data.symbols)
        counts = {"train": data.train_items, "valid": data.valid_items, "eval": data.eval_items}
        seqs = rng.choice(data.symbols, size=(sum(counts.values()), data.length), p=weights / weights.sum())
        bounds = np.cumsum([0, *counts.values()])
        return {split: list(seqs[a:b]) for split, a, b in zip(counts, bounds[:-1], bounds[1:])}

    def load_teacher(self, source: TeacherSource) -> Teacher:
        config = source.config()
        if config.model_type != "bert":
            raise InputError(f"teacher.model: toy students learn from a BERT classifier; the teacher is {config.model_type!r}")
        return Teacher(source.load_model(AUTO_CLASS).eval(), None, source)  # symbols, not text: no tokenizer

    def check_space(self, space: ClassifierSpace, teacher_config: Any) -> None:
        try:
            space.check_teacher(teacher_config)
        except ValueError as exc:
            raise InputError(f"space.{exc}") from None

    def encode(self, examples: list[Any], teacher: Teacher, data: SymbolData, split: str) -> dict[str, np.ndarray]:
        config = teacher.model.config
        if data.symbols > config.vocab_size:
            raise InputError(f"data.symbols: {data.symbols} exceed the teacher's vocabulary of {config.vocab_size}")
        ids = np.asarray(examples, dtype=np.int32)  # (N, length)
        return {"ids": ids, "labels": ids.sum(1) % config.num_labels}  # the rule the classes follow

    def lengths(self, data: PreparedData, split: str) -> np.ndarray:
        ids = data.array(f"{split}_ids")
        return np.full(len(ids), ids.shape[1])

    def batch(self, data: PreparedData, split: str, idx: np.ndarray, device: torch.device) -> Batch:
        ids = torch.from_numpy(data.array(f"{split}_ids")[idx].astype(np.int64)).to(device)  # (B, length)
        labels = torch.from_numpy(data.array(f"{split}_labels")[idx].astype(np.int64)).to(device)  # (B,)
        return Batch({"input_ids": ids, "labels": labels})

    def output_arrays(self, groups: set[str], teacher: Teacher, params: dict[str, Any], data: SymbolData) -> dict[str, OutputArray]:
        classes = teacher.model.config.num_labels
        if params["top_k"] > classes:
            raise InputError(f"loss.top_k: {params['top_k']} exceeds the teacher's {classes} classes")
        shape = (1, params["top_k"])  # one position per item
        return {"teacher_logprobs": OutputArray(shape, "float16"), "teacher_indices": OutputArray(shape, "int32")}

    def teacher_outputs(self, teacher: Teacher, batch: Batch, groups: set[str], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = teacher.model(input_ids=batch.inputs["input_ids"]).logits.float()[:, None]  # (B, 1, classes)
        top = torch.log_softmax(logits / params["temperature"], dim=-1).topk(params["top_k"], dim=-1)
        return {"teacher_logprobs": top.values, "teacher_indices": top.indices.int()}

    def importance(self, teacher: Teacher, data: PreparedData, device: torch.device) -> dict[str, Any] | None:
        return None  # students start as the teacher's first layers, not as a slice of ranked units

    def build_student(self, arch: dict[str, Any], data: PreparedData, device: torch.device) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        student = AutoModelForSequenceClassification.from_config(_config(arch, data))
        if arch["init"] == "teacher":  # the teacher's first layers; every weight has the teacher's shape
            mine = student.state_dict()
            teacher = data.teacher_source.load_model(AUTO_CLASS).state_dict()
            student.load_state_dict({k: v for k, v in teacher.items() if k in mine})
        return student.to(device)

    def as_student(self, teacher: Teacher, data: PreparedData) -> torch.nn.Module:
        return teacher.model

    def forward(
        self, student: torch.nn.Module, batch: Batch, wanted: set[str], teacher: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        logits = student(input_ids=batch.inputs["input_ids"]).logits  # (B, classes)
        return {"student_logits": logits[:, None], "labels": batch.inputs["labels"][:, None]}  # one position per item

    @torch.no_grad()
    def evaluate(self, student: torch.nn.Module, data: PreparedData, split: str, device: torch.device) -> dict[str, Any]:
        student.to(device).eval()
        batch = self.batch(data, split, np.arange(len(self.lengths(data, split))), device)  # one batch: a few items
        return self._scores(self.forward(student, batch, set(), {})["student_logits"].float(), data, split, device)

    def _scores(self, logits: torch.Tensor, data: PreparedData, split: str, device: torch.device) -> dict[str, Any]:
        """Agreement and KL of the logits (N, 1, classes) of every item of `split`."""
        t_logp = torch.from_numpy(np.array(data.array(f"{split}_teacher_logprobs"))).to(device)
        t_idx = torch.from_numpy(np.array(data.array(f"{split}_teacher_indices"))).to(device)
        agreement = (logits.argmax(-1) == t_idx[..., 0].long()).float().mean().item()
        return {"agreement": agreement, "kl": topk_kd_loss(logits, t_logp, t_idx, 1.0).item()}

    def size(self, student: torch.nn.Module, data: PreparedData, device: torch.device) -> dict[str, float]:
        return param_counts(student)

    def param_counts(self, arch: dict[str, Any], data: PreparedData) -> dict[str, int]:
        from transformers import AutoModelForSequenceClassification

        with torch.device("meta"):  # shapes alone
            return param_counts(AutoModelForSequenceClassification.from_config(_config(arch, data)))

    def describe(self, arch: dict[str, Any]) -> str:
        return f"{arch['layers']}-layer {arch['heads']}-head classifier ({arch['init']} init)"

    def export(self, student: torch.nn.Module, data: PreparedData, folder: Path) -> None:
        student.cpu().save_pretrained(folder)

    def onnx_graphs(self, student: torch.nn.Module, data: PreparedData) -> dict[str, OnnxGraph]:
        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = student

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                return self.model(input_ids=input_ids).logits

        ids = torch.ones(2, 5, dtype=torch.long)
        axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("symbols")}
        return {"model": OnnxGraph(Logits(), (ids,), ["input_ids"], ["logits"], (axes,))}

    def runtime_speed(self, sessions: dict[str, Any], data: PreparedData) -> dict[str, float]:
        ids = data.array("eval_ids")[:1].astype(np.int64)
        return {"latency_ms": median_ms(lambda: sessions["model"].run(None, {"input_ids": ids}), torch.device("cpu"))}

    def runtime_evaluate(self, sessions: dict[str, Any], data: PreparedData, split: str) -> dict[str, Any]:
        logits = sessions["model"].run(None, {"input_ids": data.array(f"{split}_ids").astype(np.int64)})[0]
        return self._scores(torch.from_numpy(logits)[:, None], data, split, torch.device("cpu"))


def _config(arch: dict[str, Any], data: PreparedData) -> Any:
    """The teacher's config with the architecture's layers and heads."""
    config = copy.deepcopy(data.teacher_config())  # the cache's own copy stays as it is
    config.num_hidden_layers, config.num_attention_heads = arch["layers"], arch["heads"]
    return config


TOY = SymbolClassifier()


def save_teacher(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT classifier of 3 classes over 16 symbols, saved as a HF folder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "bert",
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return folder


class TestToyTask(TaskContract):
    @pytest.fixture(scope="class")
    def setup(self, tmp_path_factory):
        folder = tmp_path_factory.mktemp(TOY.name)
        with pytest.MonkeyPatch.context() as registry:
            registry.setitem(TASKS, TOY.name, TOY)
            yield TaskSetup(
                TOY,
                save_teacher(folder / "teacher"),
                SymbolData(),
                ClassifierSpace(),
                ClassifierSpace(layers=(1, 3)),
                {"layers": 2, "heads": 4, "init": "teacher"},
                folder,
            )

    def test_the_spec_and_the_model_card_take_what_they_need_from_the_task(self, setup):
        from nas.model_card import model_card
        from nas.spec import SpecError, load_spec

        assert get_task(TOY.name) is TOY
        spec_file = setup.base_dir / "toy.toml"

        def spec_with(eval_table: str = "") -> Any:
            spec_file.write_text(
                f"""
[study]
task = "{TOY.name}"

[teacher]
model = "{setup.teacher}"

[data]
length = 10

[space]
layers = [1, 2]

[loss]
top_k = 3

[[eval]]
name = "skewed"
source = "skewed"
{eval_table}"""
            )
            return load_spec(spec_file)

        with pytest.raises(SpecError, match=r"^eval\[0\]\.length: unknown key; allowed: name, source \(the rest is \[data\]'s\)$"):
            spec_with("length = 8")
        spec = spec_with()
        assert spec.task is TOY and spec.loss.params == {"temperature": 2.0, "top_k": 3}
        assert spec.evals[0].data == dataclasses.replace(spec.data, source="skewed")  # the rest is [data]'s
        with pytest.raises(SpecError, match=r"^brief\.on_policy: task toy-classifier has no outputs of its own"):
            load_spec(spec_file, ["brief.on_policy=0.5"])
        with pytest.raises(SpecError, match=r"^teacher\.train: task toy-classifier cannot train its teacher here"):
            load_spec(spec_file, ["teacher.train.steps=10"])

        # The study and its extra evaluation set, cached as the command line caches them.
        cpu = torch.device("cpu")
        cached = {
            name: prepare(
                TOY, spec.teacher, data_cfg, spec.loss, base_dir=spec.base_dir, cache_root=spec.out_dir / "cache", held_out_only=extra
            )
            for name, data_cfg, extra in (("study", spec.data, False), ("skewed", spec.evals[0].data, True))
        }
        data, skewed = cached["study"], cached["skewed"]
        assert not list(data.path.glob("teacher/tokenizer*"))  # the teacher has no tokenizer to keep
        arch = setup.teacher_shaped
        student = TOY.build_student(arch, data, cpu)
        record = {
            "metrics": TOY.evaluate(student, data, "eval", cpu) | TOY.size(student, data, cpu),
            "eval_sets": {"skewed": TOY.evaluate(student, skewed, "eval", cpu)},
            "teacher_eval_sets": {"skewed": skewed.meta["teacher_metrics"]},
            "brief": {},
            "brief_eval_sets": {"skewed": {"agreement": 0.5}},
            "steps": 0,
            "best_step": None,
            "stopped_early": False,
            "device": "cpu",
            "command": "",
        }
        card = model_card(spec, data.meta, 0, arch, record)
        assert "pipeline_tag: text-classification" in card and TOY.card.usage.format(path="path/to/this/folder") in card
        assert "It has 100.0% of the teacher's\nparameters. Load it with:" in card and "tokenizer" not in card
        assert all(m.label in card for m in TOY.metrics if not m.runtime)  # the runtime's where it was measured
        assert "| agreement with the teacher's class | 1.000 | 0.500 | 1.000 |" in card  # the skewed set's row: full, brief, teacher
