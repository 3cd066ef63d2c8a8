"""The edge runtime against PyTorch, side by side in one process: a searched study's pick (the
front's best at its first objective, what `nas distill --best` takes) fully distilled with the
spec's `[full]` budget, then measured three ways with the same code: PyTorch in fp32, ONNX
Runtime with the fp32 graphs, ONNX Runtime with the int8 graphs.

The same code: each task's runtime measurement (`Task.runtime_speed`, `Task.runtime_evaluate`)
drives sessions, and PyTorch runs here behind a session of the same shape (`TorchSession`: the
very modules the ONNX graphs were traced from, called in torch with no gradient). So latency is
per sentence for embeddings, per generated token with the KV cache and to the first token for
decoders, per greedily translated sentence for translation, in all three columns alike; the
quality is that of the held-out split, generated text greedy. Size is what ships: the PyTorch
export's safetensors, the ONNX files.

    python benchmarks/runtime.py studies/demo.toml [KEY=VALUE ...]   # appends its row to runtime_runs.jsonl
    python benchmarks/runtime.py --table                              # the README's table of every row
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runtime_runs.jsonl"
WAYS = ("PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8")


class _Port:
    def __init__(self, name: str, shape: list[Any]) -> None:
        self.name, self.shape = name, shape


class TorchSession:
    """An `OnnxGraph`'s module behind ONNX Runtime's session interface (`run`, `get_inputs`,
    `get_outputs`): inputs by name as numpy, outputs as numpy, in torch with no gradient."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        leaves, self.structure = pytree.tree_flatten(graph.args)
        axes = pytree.tree_leaves(graph.dynamic, is_leaf=lambda x: isinstance(x, dict))
        self.inputs = [
            _Port(name, [f"d{i}" if i in dyn else n for i, n in enumerate(leaf.shape)])
            for name, leaf, dyn in zip(graph.inputs, leaves, axes)
        ]

    def get_inputs(self) -> list[_Port]:
        return self.inputs

    def get_outputs(self) -> list[_Port]:
        return [_Port(name, []) for name in self.graph.outputs]

    @torch.no_grad()
    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = pytree.tree_unflatten([torch.from_numpy(np.asarray(feeds[p.name])) for p in self.inputs], self.structure)
        out = self.graph.module(*args)
        return [t.numpy() for t in pytree.tree_leaves(out)]


def measure_pytorch(task: Any, student: torch.nn.Module, data: Any) -> dict[str, float]:
    """`distill.runtime.measure_files`' figures of the PyTorch student in fp32, the size being
    that of its export's safetensors."""
    from distill.tasks.base import scores_and_text

    model = student.cpu().float().eval()
    sessions = {name: TorchSession(g) for name, g in task.onnx_graphs(model, data).items()}
    values = {**task.runtime_speed(sessions, data), **scores_and_text(task.runtime_evaluate(sessions, data, "eval"))[0]}
    with tempfile.TemporaryDirectory() as tmp:
        task.export(model, data, Path(tmp))
        values["file_mb"] = sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors")) / 2**20
    return values


def run(args: argparse.Namespace) -> None:
    from distill import runtime
    from distill.tasks import quality_metrics
    from nas.full import distill_arch, select_trial
    from nas.prepare import prepare_study
    from nas.spec import load_spec
    from nas.study import TrialRecord, load_existing_study

    spec = load_spec(Path(args.spec), args.overrides)
    task = spec.task
    study = load_existing_study(spec)
    metric = spec.objectives.metrics[0][0]
    pick = select_trial(study, metrics=quality_metrics(task), best=metric)
    arch = TrialRecord(pick).arch
    data = prepare_study(spec)
    logging.info("trial %d (%s): the full run", pick.number, task.describe(arch))
    start = time.perf_counter()
    student = distill_arch(spec, arch, data).student
    seconds = time.perf_counter() - start
    torch.set_num_threads(args.threads)
    ways = {WAYS[0]: measure_pytorch(task, student, data)}
    with tempfile.TemporaryDirectory() as tmp:
        files = runtime.export(task, student, data, Path(tmp))
        for way, p in zip(WAYS[1:], runtime.PRECISIONS):
            measured = runtime.measure_files(task, files[p], data, p, threads=args.threads)
            ways[way] = {k.removeprefix(f"runtime_{p}_"): v for k, v in measured.items()}
    row = {
        "spec": args.spec, "task": task.name, "trial": pick.number, "arch": task.describe(arch),
        "non_embedding_params": TrialRecord(pick).attrs.get("non_embedding_params"), "steps": spec.full.steps,
        "overrides": args.overrides, "threads": args.threads, "train_seconds": seconds, "ways": ways,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    with RUNS.open("a") as f:
        f.write(json.dumps(row, default=float) + "\n")
    print(table([row]))


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table per row (study): its figures in each of the three ways, and the
    runtime's ratio to PyTorch's."""
    from distill.tasks import get_task

    out = []
    for row in rows:
        task = get_task(row["task"])
        labels = {m.name.removeprefix("runtime_fp32_"): m for m in task.metrics if m.runtime == "fp32"}
        names = [n for n in labels if all(n in row["ways"][w] for w in WAYS)]
        out.append(
            f"`{row['spec']}`, trial {row['trial']} ({row['arch']}, {row['non_embedding_params']:,} non-embedding "
            f"parameters), {row['steps']} full-run steps, {row['threads']} threads:\n"
        )
        out.append("| | " + " | ".join(WAYS) + " | int8 / PyTorch |")
        out.append("|---|" + "---|" * (len(WAYS) + 1))
        for n in names:
            m = labels[n]
            values = [row["ways"][w][n] for w in WAYS]
            ratio = f"{values[2] / values[0]:.2f}" if values[0] else "-"
            out.append(f"| {m.label.removeprefix('ONNX Runtime fp32: ')} | " + " | ".join(m.format(v) for v in values) + f" | {ratio} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", help="a searched study's spec")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE spec settings, e.g. full.steps=400")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of all three ways")
    parser.add_argument("--table", action="store_true", help="print the table of every run in runtime_runs.jsonl")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.table:
        rows = [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()] if RUNS.exists() else []
        print(table(rows))
        return
    if not args.spec:
        parser.error("give a study spec, or --table")
    run(args)


if __name__ == "__main__":
    main()
