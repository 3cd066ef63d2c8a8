"""The runtime a student ships on: ONNX Runtime, with fp32 weights and with int8 weights.

One path for every task. A task says which ONNX graphs its student is (`Task.onnx_graphs`:
one for a sentence encoder or a decoder-only model, an encoder and a decoder for
translation), how fast a model of ONNX Runtime sessions runs (`Task.runtime_speed`) and how
good its outputs are (`Task.runtime_evaluate`). This module exports the graphs with torch's
exporter (`torch.onnx.export(dynamo=True)`: transformers 5 students trace there, where the
`optimum` exporters still pin transformers 4), quantizes their weights to int8 with ONNX
Runtime's dynamic quantization (weights int8 per output channel, activations quantized on the
fly), opens sessions and names the metrics: `runtime_<precision>_<name>`.

Decoders carry their KV cache in and out as `past_key_values.<layer>.key|value` and
`present.<layer>.key|value` (the layout other ONNX tools read), and start with a cache of
length 0.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

RUNTIME = "onnxruntime"
PRECISIONS = ("fp32", "int8")
FOLDER = "onnx"
"""where an export keeps its runtime files (`<graph>.onnx`, `<graph>_int8.onnx`)"""
PAST, PRESENT = "past_key_values", "present"


def metric_name(precision: str, name: str) -> str:
    """The stored name of a runtime metric: `runtime_int8_latency_ms`."""
    return f"runtime_{precision}_{name}"


def with_runtime(metrics: tuple[Any, ...], speed: tuple[Any, ...], greedy: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """A task's `metrics` (`distill.tasks.base.Metric`s, quality first) with their runtime
    counterparts, for each precision: the quality metrics of the runtime model's outputs
    after the task's quality metrics (those named in `greedy` scored on greedy output, said in
    their labels); its `speed` metrics as the task measures them in the runtime, and the size
    of the model's files, after the size metrics."""
    quality = [m for m in metrics if m.kind == "quality"]
    runtime_quality, runtime_size = [], []
    for p in PRECISIONS:

        def named(m: Any, kind: str, p: str = p) -> Any:
            return dataclasses.replace(m, name=metric_name(p, m.name), kind=kind, label=f"ONNX Runtime {p}: {m.label}", runtime=p)

        files = dataclasses.replace(speed[0], name="file_mb", direction="min", fmt="{:.2f}", label="model files, MiB")
        runtime_size += [named(m, "size") for m in (*speed, files)]
        runtime_quality += [
            named(dataclasses.replace(m, label=m.label + ", greedy") if m.name in greedy else m, "quality") for m in quality
        ]
    return (*quality, *runtime_quality, *(m for m in metrics if m.kind != "quality"), *runtime_size)


def precision_of(metric: str) -> str | None:
    """The precision a runtime metric is measured at (None for other metrics)."""
    parts = metric.split("_")
    return parts[1] if len(parts) > 2 and parts[0] == "runtime" and parts[1] in PRECISIONS else None


@dataclasses.dataclass
class OnnxGraph:
    """One graph of a student: the module to trace, example arguments (tuples of tensors may
    nest, as the module takes them), the names of the inputs (flattened) and outputs, and the
    dynamic axes of each argument (`torch.export.Dim`s, nested as `args`)."""

    module: torch.nn.Module
    args: tuple[Any, ...]
    inputs: list[str]
    outputs: list[str]
    dynamic: tuple[Any, ...]


def graph_file(graph: str, precision: str) -> str:
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}_{precision}.onnx"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's exporter prints its progress and warns at every traced transformers check."""
    with warnings.catch_warnings(), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        warnings.simplefilter("ignore")
        chatty = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
        previous = [one.level for one in chatty]
        for one in chatty:
            one.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for one, level in zip(chatty, previous):
                one.setLevel(level)


def export(task: Any, student: torch.nn.Module, data: Any, folder: Path, precisions: tuple[str, ...] = PRECISIONS) -> dict[str, dict[str, Path]]:
    """Write `student`'s graphs into `folder` in each of `precisions`; the files by precision
    and graph name. The student itself is left as it was (a copy on the CPU in fp32 is traced)."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown runtime precision {unknown[0]!r}; allowed: {', '.join(PRECISIONS)}")
    folder.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(student).cpu().float().eval()
    fp32 = {}
    for name, g in task.onnx_graphs(model, data).items():
        path = folder / graph_file(name, "fp32")
        with _quiet(), torch.no_grad(), torch.autocast("cpu", enabled=False):
            program = torch.onnx.export(
                g.module, g.args, input_names=g.inputs, output_names=g.outputs, dynamic_shapes=g.dynamic,
                dynamo=True, verbose=False, optimize=True,
            )
            program.save(str(path))
        fp32[name] = path
    files = {"fp32": fp32}
    if "int8" in precisions:
        files["int8"] = {name: quantize_int8(path, folder / graph_file(name, "int8")) for name, path in fp32.items()}
    if "fp32" not in precisions:
        for path in fp32.values():
            path.unlink()
        files.pop("fp32")
    return files


def quantize_int8(source: Path, target: Path) -> Path:
    """`source` with the weights of its matrix products and embeddings in int8 (per output
    channel), activations quantized at run time: ONNX Runtime's dynamic quantization."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        disabled = logging.root.manager.disable
        logging.disable(max(disabled, logging.WARNING))  # its advice to preprocess, on the root logger
        try:
            large = source.with_name(source.name + ".data").exists() or source.stat().st_size > 2**30
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=large)
        finally:
            logging.disable(disabled)
    return target


def sessions(files: dict[str, Path], threads: int | None = None) -> dict[str, Any]:
    """An ONNX Runtime CPU session per graph, with `threads` intra-op threads (default: as
    many as torch uses here, the trial's CPUs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for name, path in files.items()}


def files_mb(files: dict[str, Path]) -> float:
    """What the graphs weigh on disk, MiB (external weight files included)."""
    total = 0
    for path in files.values():
        total += path.stat().st_size
        extra = path.with_name(path.name + ".data")
        total += extra.stat().st_size if extra.exists() else 0
    return total / 2**20


def measure(
    task: Any,
    student: torch.nn.Module,
    data: Any,
    speed: tuple[str, ...] = (),
    quality: tuple[str, ...] = (),
    threads: int | None = None,
) -> dict[str, float]:
    """The runtime metrics of `student`, exported and quantized in a temporary folder: at the
    precisions `speed`, its speed (`Task.runtime_speed`) and the size of its files; at the
    precisions `quality`, its scores on the held-out split (`Task.runtime_evaluate`)."""
    precisions = tuple(p for p in PRECISIONS if p in {*speed, *quality})
    if not precisions:
        return {}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="distill-onnx-") as tmp:
        files = export(task, student, data, Path(tmp), precisions)
        for p in precisions:
            out |= measure_files(task, files[p], data, p, threads, speed=p in speed, quality=p in quality)
    return out


def measure_files(
    task: Any,
    files: dict[str, Path],
    data: Any,
    precision: str,
    threads: int | None = None,
    *,
    speed: bool = True,
    quality: bool = True,
) -> dict[str, float]:
    """The runtime metrics of the graphs `files` (of one precision): speed and file size
    with `speed`, held-out scores with `quality`."""
    from distill.tasks.base import scores_and_text

    running = sessions(files, threads)
    values = {**task.runtime_speed(running, data), "file_mb": files_mb(files)} if speed else {}
    if quality:
        values |= scores_and_text(task.runtime_evaluate(running, data, "eval"))[0]
    return {metric_name(precision, k): float(v) for k, v in values.items()}


class KvCache:
    """A decoder graph's KV cache between calls: empty at first (length 0), then what the
    graph returned as `present.*`."""

    def __init__(self, session: Any, batch: int) -> None:
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]
        self.past = {
            i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
            for i in session.get_inputs()
            if i.name.startswith(PAST)
        }

    @property
    def length(self) -> int:
        return next(iter(self.past.values())).shape[2] if self.past else 0

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The logits of the graph on `feeds` and the cache; the cache moves on."""
        values = dict(zip(self.outputs, self.session.run(None, {**feeds, **self.past})))
        self.past = {name: values[PRESENT + name[len(PAST) :]] for name in self.past}
        return values["logits"]


def cache_argument(model: torch.nn.Module) -> str:
    """The name a transformers model takes its KV cache by: `cache` (transformers 5.25 on),
    `past_key_values` before (deprecated since, gone in 5.40)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out: Any) -> Any:
    """The KV cache of a transformers model's output, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    """The names of a decoder graph's cache inputs and outputs, in the order of its arguments."""
    past = [f"{PAST}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [PRESENT + name[len(PAST) :] for name in past]


__all__ = [
    "FOLDER",
    "PRECISIONS",
    "RUNTIME",
    "KvCache",
    "OnnxGraph",
    "cache_argument",
    "cache_names",
    "cache_of",
    "export",
    "files_mb",
    "graph_file",
    "measure",
    "measure_files",
    "metric_name",
    "precision_of",
    "quantize_int8",
    "with_runtime",
    "sessions",
]
