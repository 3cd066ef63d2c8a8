"""Full runs on several workers: one student's `[full]` training as a Ray Train job
(`TorchTrainer`: DistributedDataParallel over gloo on CPUs, NCCL on GPUs), on a Ray of this
machine's own or on the cluster `nas distill --address` names.

Every worker builds the same student and loss from the study's cache (a shared folder on a
cluster) and trains on its share of every global batch (`distill.loop.Workers`): the batch is
the one a single process takes. The student and its loss run as one module inside
DistributedDataParallel, so that what the loss trains besides the student (projections of
intermediate-layer terms) is averaged too, and a batch some workers score on the student's own
samples (on-policy) leaves the parameters it does not use out of that step. Worker 0 writes
the run's checkpoints into the study folder, as a one-process run does, with every worker's
random state; when a worker fails (killed, its node lost) Ray Train starts the group again
(`FailureConfig`) and the run continues from its last checkpoint. Worker 0 leaves the final
weights there, which the calling process loads, measures and exports.

Imports Ray: imported only by a run that has workers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.util.queue import Empty, Queue
from torch.nn.parallel import DistributedDataParallel

from distill.errors import InputError
from distill.loop import LAST_CHECKPOINT, TrainResult, Workers, save_whole
from distill.precision import computing_in
from distill.run import build_student
from nas.spec import StudySpec

logger = logging.getLogger(__name__)

FINAL = "final.pt"
"""in the run's checkpoint folder: the weights worker 0 ends with, and the loop's result"""
MAX_FAILURES = 3
"""times Ray Train starts the workers again after one fails, each time from the last checkpoint"""
RESTARTED = ("restarted",)
"""what worker 0 tells the calling process when Ray Train has started the workers again"""
FAILED = "failed"
"""worker 0's word for a run that cannot go on (a non-finite loss, bad input), with the error"""


class LossModule(torch.nn.Module):
    """The student and its loss as one module, for DistributedDataParallel to run: every
    forward pass of the loss, and every parameter it trains, are in its graph."""

    def __init__(self, student: torch.nn.Module, loss_fn: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.student = student
        self.loss_fn = loss_fn

    def forward(self, *batch: Any) -> torch.Tensor:
        return self.loss_fn(*batch)


def worker_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the run from the start, or from its last checkpoint
    (`--resume`, or after a worker failed)."""
    from nas.full import train_full  # the full run's own code, in the worker

    spec: StudySpec = config["spec"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    ckpt: Path = config["checkpoint_dir"]
    queue: Queue = config["progress"]

    def parallel(student: torch.nn.Module, loss_fn: Callable[[Any], torch.Tensor]) -> tuple[Any, Workers]:
        ddp = DistributedDataParallel(
            LossModule(student, loss_fn),
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
        return ddp, Workers(rank, world, ddp, device)

    def on_step(step: int, total: int, loss: float) -> None:
        queue.put((step, total, loss))

    last = ckpt / LAST_CHECKPOINT
    if rank == 0 and last.exists() and last.stat().st_mtime > config["started"]:  # written by this job: a restart
        queue.put(RESTARTED)
    try:
        with computing_in(config["precision"]):
            student, result = train_full(spec, config["arch"], config["data"], device, config["others"], on_step, ckpt, last.exists(), parallel)
    except (FloatingPointError, InputError) as exc:  # the same again on a restart: told, not retried
        if rank == 0:
            queue.put((FAILED, type(exc).__name__, str(exc)))
        return
    if rank == 0:
        save_whole({"weights": student.state_dict(), "result": dataclasses.asdict(result)}, ckpt / FINAL)


def train_on_workers(
    spec: StudySpec,
    arch: dict[str, Any],
    data: Any,
    others: tuple[Any, ...],
    on_step: Callable[[int, int, float], None] | None,
    checkpoint_dir: Path,
    address: str | None,
    device: torch.device,
    precision: str,
) -> tuple[torch.nn.Module, TrainResult]:
    """Train on `spec.full.workers` Ray Train workers (each with the spec's `[resources]`) in
    `precision` (as this process resolved it, so that every worker and the record agree);
    the student (built here on `device`, with worker 0's final weights) and the loop's result."""
    from ray.train.torch import TorchConfig, TorchTrainer

    from nas.search import start_ray

    if not ray.is_initialized():
        start_ray(address)
    check_workers(spec, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    gpus = spec.resources.gpus
    (checkpoint_dir / FINAL).unlink(missing_ok=True)
    progress = Queue(actor_options={"num_cpus": 0})  # worker 0's steps, for this process's progress
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "spec": spec, "arch": arch, "data": data, "others": others, "checkpoint_dir": checkpoint_dir.resolve(),
            "progress": progress, "started": time.time(), "precision": precision,
        },  # fmt: skip
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.full.workers,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": spec.resources.cpus, **({"GPU": gpus} if gpus > 0 else {})},
        ),
        run_config=ray.train.RunConfig(
            name=f"distill-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str((spec.out_dir / "ray").resolve()),
            failure_config=ray.train.FailureConfig(max_failures=MAX_FAILURES),
        ),
    )
    done, failed = threading.Event(), []
    relay = threading.Thread(target=_relay, args=(progress, on_step, done, failed.append), daemon=True)
    relay.start()
    logger.info("training on %d workers (Ray Train)", spec.full.workers)
    try:
        trainer.fit()
    finally:
        done.set()
        relay.join()
        progress.shutdown()
    if failed:
        kind, message = failed[0]
        raise (FloatingPointError if kind == "FloatingPointError" else InputError)(message)
    final = torch.load(checkpoint_dir / FINAL, map_location="cpu", weights_only=True)
    student = build_student(spec.task, arch, data, device, spec.study.seed)
    student.load_state_dict(final["weights"])
    result = final["result"]
    return student, TrainResult(**{**result, "evals": [tuple(e) for e in result["evals"]]})


def check_workers(spec: StudySpec, nodes: list[dict[str, float]]) -> None:
    """Refuse workers that Ray cannot place all at once (`nodes`: each node's resources): it
    would wait for them forever."""
    r, workers = spec.resources, spec.full.workers
    if r.gpus > 0 and r.gpus != int(r.gpus):
        raise InputError(f"resources.gpus: each of the {workers} workers needs whole GPUs (NCCL takes one GPU a worker), got {r.gpus:g}")
    fit = sum(int(min(n.get("CPU", 0) // r.cpus, n.get("GPU", 0) // r.gpus if r.gpus > 0 else math.inf)) for n in nodes)
    if fit < workers:
        each = f"{r.cpus:g} CPU(s)" + (f" and {r.gpus:g} GPU(s)" if r.gpus > 0 else "")
        raise InputError(
            f"full.workers: {workers} workers of {each} each (resources.cpus, resources.gpus); "
            f"the {len(nodes)} node(s) of this Ray hold {fit}"
        )


def _relay(
    queue: Queue, on_step: Callable[[int, int, float], None] | None, done: threading.Event, fail: Callable[[Any], None]
) -> None:
    """Hand worker 0's steps to `on_step` in this process, and its failure to `fail`, until
    the run ends."""
    while not done.is_set() or not queue.empty():
        try:
            said = queue.get(timeout=0.5)
        except Empty:
            continue
        if said == RESTARTED:
            logger.warning("a worker failed: Ray Train started the workers again, from the run's last checkpoint")
        elif said[0] == FAILED:
            fail(said[1:])
        elif on_step is not None:
            on_step(*said)


__all__ = ["FINAL", "MAX_FAILURES", "LossModule", "check_workers", "train_on_workers", "worker_loop"]
