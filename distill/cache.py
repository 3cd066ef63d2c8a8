"""Once per study: the data tokenized and the teacher's outputs cached on disk for every trial.

One mechanism for every task: the task encodes each split's documents into items and computes
its teacher outputs on batches of them; this module decides which outputs (the union of what
the loss terms need, and what evaluation reads on held-out splits), stores them as memory-mapped
arrays, measures the teacher, and publishes the folder whole. A finished cache is reused as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import math
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.data import BUILTIN_CORPORA, SPLITS, DataSplits, load_examples, mixture
from distill.errors import InputError
from distill.files import held, written_whole
from distill.precision import computing_in, current
from distill.teacher_outputs import groups_for, split_params
from distill.teachers import TeacherConfig, TeacherSource, teacher_source

if TYPE_CHECKING:
    from distill.objective import LossConfig
    from distill.tasks.base import Task, Teacher

logger = logging.getLogger(__name__)


TEACHER_METRICS = "teacher_metrics"  # meta: the teacher measured as a student (quality and size)
ADDED_DATA = {"mix": (), "stopping_strategy": "first_exhausted", "sentences": 0.0}
"""data settings added after caches were first keyed: at these values (what the data was
before them) they stay out of the key, so that those caches stay valid"""
DATA_INFO = "data_info"  # meta: what reading the data found (skipped examples, counts)
SCORING = "scoring"  # meta: how quality is computed (e.g. sacrebleu's signatures)
PRECISION = "precision"  # meta: what the teacher ran in ("bf16" or "fp32"), a part of the key
ALIGNED_TO = "aligned_to"  # meta: the cache whose training items a teacher of another tokenizer ran on
ALIGNED_SHARE = "aligned_share"  # meta: the share of the student's training tokens aligned with one of that teacher's


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A finished cache folder; cheap to pickle and send to trial workers."""

    path: Path

    def array(self, name: str) -> np.ndarray:
        """A cached array, memory-mapped; opened once per object (batches read it every step)."""
        return self._once(f"array:{name}", lambda: np.load(self.path / f"{name}.npy", mmap_mode="r"))

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        """What `make` reads from the folder, read once per object (a finished cache never changes)."""
        opened = self.__dict__.setdefault("_opened", {})
        if key not in opened:
            opened[key] = make()
        return opened[key]

    def __getstate__(self) -> dict[str, Any]:
        """Only the folder travels to workers; each opens its own memory maps."""
        return {"path": self.path}

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        """The cache's description (read once per object; a finished cache never changes)."""
        return json.loads((self.path / "meta.json").read_text())

    @property
    def teacher_name(self) -> str:
        return self.meta["teacher_name"]

    @property
    def teacher_metrics(self) -> dict[str, Any]:
        """The teacher measured as a student on the held-out split: every quality and size metric."""
        return self.meta[TEACHER_METRICS]

    @property
    def data_info(self) -> dict[str, Any]:
        return self.meta.get(DATA_INFO, {})

    @property
    def scoring(self) -> dict[str, str]:
        return self.meta.get(SCORING, {})

    @property
    def precision(self) -> str:
        """What the teacher ran in when its outputs were cached (fp32 in caches made before the setting)."""
        return self.meta.get(PRECISION, "fp32")

    def items(self, split: str) -> list[str]:
        """The names of the arrays that hold `split`'s items (token ids, masks), not the teacher's outputs on them."""
        outputs = set(self.meta["outputs"].get(split, {}))
        names = [p.stem[len(split) + 1 :] for p in sorted(self.path.glob(f"{split}_*.npy"))]
        return [name for name in names if name not in outputs]

    @property
    def aligned(self) -> bool:
        """Whether this is a teacher of another tokenizer than the study's first, whose
        training outputs are on the first teacher's items (see `prepare`'s `align_to`)."""
        return ALIGNED_TO in self.meta

    @property
    def teacher_source(self) -> TeacherSource:
        return TeacherSource(**self.meta["teacher_source"])

    def teacher_config(self) -> Any:
        from transformers import AutoConfig

        return self._once("config", lambda: AutoConfig.from_pretrained(self.path / "teacher"))

    def teacher_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return self._once("tokenizer", lambda: AutoTokenizer.from_pretrained(self.path / "teacher"))

    def teacher_generation_config(self) -> Any:
        """How the teacher decodes (copy it before changing it)."""
        from transformers import GenerationConfig

        return self._once("generation", lambda: GenerationConfig.from_pretrained(self.path / "teacher"))


TEACHER_TEXT = "eval_teacher_text"
"""The cached array of the text the teacher generated on the held-out split (tasks that generate)"""

CACHE_FORMAT = 6
"""Raised whenever what a cache holds for the same inputs changes (2: held-out splits without
paragraphs of earlier splits; 3: what reading the data found and how quality is scored; 4: the
importance of Marian and T5 teachers' units; 5: the teacher's generation config, held-out
sources and the teacher's generated text, EOS only where a tokenizer puts none; 6: hidden states
and attention maps named by stack), so an older cache is never reused."""


def cache_key(
    task: str,
    source: TeacherSource,
    data: Any,
    plan: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    base_dir: Path,
) -> str:
    """The cache folder's name: every input of the teacher's outputs, down to the size and
    modification time of each file of a local teacher and of the data (a file replaced or
    edited in place makes another key)."""
    teacher = files_stamp(Path(source.path)) if source.local else []
    fields = {k: v for k, v in dataclasses.asdict(data).items() if not (k in ADDED_DATA and v == ADDED_DATA[k])}
    blob = json.dumps(
        [CACHE_FORMAT, task, source.path, source.revision, teacher, fields, data_stamp(data, base_dir)]
        + [plan, params, seed],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def files_stamp(path: Path) -> list[tuple[str, int, int]]:
    """(name, size, modification time) of the file `path` or of every file under the folder `path`."""
    def kept(p: Path) -> bool:  # not a tool's own files (.git, .cache of downloads, __pycache__)
        return p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts)

    files = sorted(p for p in path.rglob("*") if kept(p)) if path.is_dir() else [path] if path.exists() else []
    return [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def data_stamp(data: Any, base_dir: Path) -> list[Any]:
    """What a data section's text depends on beyond its settings: its local files (or a local
    dataset folder given as its source), the version of a package it reads, Python's (whose
    documentation the built-in corpora are). Its files are stamped by size and modification
    time, leaving out dot-files and caches."""
    if getattr(data, "mix", ()):
        return [data_stamp(part, base_dir) for _, part in mixture(data)]
    fields = dataclasses.asdict(data)
    local = [p for p in (*fields.get("files", ()), fields.get("source", "")) if p and (base_dir / p).exists()]
    stamp: list[Any] = [files_stamp((base_dir / p).resolve()) for p in local]
    if fields.get("package"):
        try:
            stamp.append(importlib.metadata.version(fields["package"].replace("_", "-")))
        except importlib.metadata.PackageNotFoundError:
            stamp.append(None)
    if fields.get("source") in BUILTIN_CORPORA:  # Python's own documentation
        stamp.append(platform.python_version())
    if fields.get("source") == "english-prose":  # gensim's test data
        stamp.append(importlib.metadata.version("gensim"))
    if fields.get("source") == "package-docstrings":  # and that of what is installed
        stamp.append(sorted((d.metadata["Name"] or "", d.version) for d in importlib.metadata.distributions()))
    return stamp


def prepare(
    task: Task,
    teacher_cfg: TeacherConfig,
    data_cfg: Any,
    loss: LossConfig,
    *,
    base_dir: Path,
    cache_root: Path,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    check: Callable[[Any], None] | None = None,
    held_out_only: bool = False,
    align_to: PreparedData | None = None,
) -> PreparedData:
    """Load the teacher and data once and fill the cache; reuse a finished one. `check(config)`
    sees the teacher's config before any teacher output is computed (and on reuse).

    `held_out_only`: an extra evaluation set (`[[eval]]`): every example of the source becomes
    the "eval" split, with the teacher outputs evaluation reads and the teacher's own metrics;
    the teacher must exist already.

    `precision` ("bf16" or "fp32", resolved for `device`): the teacher is loaded and run in it
    (`distill.precision`); the outputs are stored in the same dtypes either way, and a cache
    is kept per precision.

    `align_to`: the cache of the study's first teacher, where this teacher's tokenizer is
    another: the training split's items are the first teacher's (the student's tokens), and
    this teacher's outputs on them (the "ranked" group only) come from its own tokens of the
    same text, aligned (`Teacher.student_tokenizer`); the held-out splits are its own, to
    measure it."""
    source = teacher_source(teacher_cfg, base_dir)
    # How quality is scored, first: a metric this machine cannot compute fails before anything runs.
    scoring = task.scoring(data_cfg)
    splits = ("eval",) if held_out_only else SPLITS
    docs = None if held_out_only else _train_teacher(task, teacher_cfg, source, data_cfg, base_dir, seed)
    # a teacher of the student's tokenizer gives every group but the aligned ones, one of another only those
    needs = groups_for(loss.needs(), aligned=align_to is not None)
    plan = {
        "train": sorted(needs) if loss.teacher_outputs == "cached" else [],
        "valid": sorted(task.eval_outputs),
        "eval": sorted(task.eval_outputs),
    }
    plan = {split: plan[split] for split in splits}
    params = {split: split_params(task, loss, split) for split in splits}
    # fp32 on a CPU keeps the key caches made before the setting had (they were fp32 there; on a
    # GPU they were made under bf16 autocast, so no cache of a GPU is reused under a new key)
    old = precision == "fp32" and torch.device(device).type == "cpu"
    keyed = params | ({} if old else {PRECISION: precision}) | ({ALIGNED_TO: align_to.path.name} if align_to else {})
    final = cache_root / cache_key(task.name, source, data_cfg, plan, keyed, seed, base_dir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(computing_in(precision))
        if not (final / "meta.json").exists():
            # One run builds it (in `<key>.partial`, published whole); another waits, then reuses it.
            lock = cache_root.parent / "locks" / f"cache-{final.name}.lock"  # beside the cache: its folder lists caches
            stack.enter_context(held(lock, what="the teacher cache being built"))
        if (final / "meta.json").exists():
            logger.info("reusing the teacher cache %s", final)
            data = PreparedData(final)
            if check is not None:
                check(data.teacher_config())
            return data
        teacher = task.load_teacher(source)  # a teacher of the wrong kind is refused before the data is read
        if check is not None:
            check(teacher.model.config)
        docs = docs or load_examples(task, data_cfg, base_dir, seed)
        if held_out_only:  # the whole source is held out
            docs = DataSplits({"eval": [example for split in SPLITS for example in docs[split]]}, getattr(docs, "info", {}))
        dev = torch.device(device)
        teacher.model.to(dev)
        with written_whole(final) as tmp:
            _fill(tmp, task, teacher, source, docs, data_cfg, plan, params, scoring, dev, held_out_only, align_to)
        logger.info("teacher outputs cached in %s", final)
    return PreparedData(final)


def ensure_teacher(task: Task, cfg: TeacherConfig, data_cfg: Any, *, base_dir: Path, seed: int = 0) -> TeacherSource:
    """The teacher's source, trained first where `[teacher.train]` asks for one that does not
    exist yet (as `prepare` would)."""
    source = teacher_source(cfg, base_dir)
    _train_teacher(task, cfg, source, data_cfg, base_dir, seed)
    return source


def _train_teacher(task: Task, cfg: TeacherConfig, source: TeacherSource, data_cfg: Any, base_dir: Path, seed: int) -> Any:
    """Train the teacher `[teacher.train]` asks for where it does not exist yet (one run trains
    it; another waits and uses it); the data it read, or None."""
    if cfg.train is None or source.exists():
        return None
    folder = Path(source.path)
    with held(folder.parent / "locks" / f"teacher-{folder.name}.lock", what=f"the teacher {source.name} being trained"):
        if source.exists():
            return None
        docs = load_examples(task, data_cfg, base_dir, seed)
        # A teacher trained here may see the validation documents (they only choose the
        # students' checkpoints); the held-out evaluation documents stay unseen by teacher and students.
        task.train_teacher(cfg.train, docs["train"] + docs["valid"], folder, data_cfg)
        return docs


def _fill(
    tmp: Path,
    task: Task,
    teacher: Teacher,
    source: TeacherSource,
    docs: Any,
    data_cfg: Any,
    plan: dict[str, list[str]],
    params: dict[str, dict[str, Any]],
    scoring: dict[str, str],
    dev: torch.device,
    held_out_only: bool,
    align_to: PreparedData | None = None,
) -> None:
    """Write a cache into `tmp`: each split's items, the teacher's config, tokenizer and outputs,
    the importance of its units, and the teacher measured as a student."""
    splits = list(plan)
    counts = {}
    for split in splits:
        if split == "train" and align_to is not None:  # the student's items
            arrays = {name: np.asarray(align_to.array(f"train_{name}")) for name in align_to.items("train")}
        else:
            arrays = task.encode(docs[split], teacher, data_cfg, split)
        for name, arr in arrays.items():
            np.save(tmp / f"{split}_{name}.npy", arr)
        counts[split] = len(next(iter(arrays.values())))
    for split in splits:  # every output's settings are checked before the build is announced
        task.output_arrays(set(plan[split]), teacher, params[split], data_cfg)
    logger.info("building the teacher cache %s", tmp.name.removesuffix(".partial"))
    logger.info("%s: %s", task.card.items, " / ".join(f"{counts[s]} {s}" for s in splits))
    teacher.model.config.save_pretrained(tmp / "teacher")
    if getattr(teacher.model, "generation_config", None) is not None:  # how the teacher decodes
        teacher.model.generation_config.save_pretrained(tmp / "teacher")
    if teacher.tokenizer is not None:  # none for a teacher whose inputs are not text
        teacher.tokenizer.save_pretrained(tmp / "teacher")
    meta: dict[str, Any] = {
        "task": task.name,
        "teacher_source": dataclasses.asdict(source),
        "teacher_name": source.name,
        "teacher_info": teacher.info,
        **{f"{split}_items": n for split, n in counts.items()},
        "data": dataclasses.asdict(data_cfg),
        DATA_INFO: getattr(docs, "info", {}),
        SCORING: scoring,
        "plan": plan,
        "params": params,
        PRECISION: current(),
    }
    if align_to is not None:
        meta[ALIGNED_TO] = align_to.path.name
    meta["outputs"] = {}
    for split in splits:
        aligned = split == "train" and align_to is not None
        teacher.student_tokenizer = align_to.teacher_tokenizer() if aligned else None
        meta["outputs"][split] = _write_outputs(
            task, teacher, PreparedData(tmp), data_cfg, split, set(plan[split]), params[split], dev
        )
    teacher.student_tokenizer = None
    if align_to is not None and "teacher_aligned" in meta["outputs"].get("train", {}):
        aligned = float(np.asarray(PreparedData(tmp).array("train_teacher_aligned"), dtype=np.float64).sum())
        meta[ALIGNED_SHARE] = aligned / max(1.0, float(task.lengths(PreparedData(tmp), "train").sum()))
        logger.info("%.1f%% of the student's training tokens have a teacher token starting where they do", 100 * meta[ALIGNED_SHARE])
    # students are sliced from the first teacher alone (and the training items here are not this one's tokens)
    scores = None if held_out_only or align_to is not None else task.importance(teacher, PreparedData(tmp), dev)
    if scores is not None:  # for students sliced from the teacher
        torch.save(scores, tmp / "importance.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    probe = PreparedData(tmp)
    as_student = task.as_student(teacher, probe)
    from distill.tasks.base import scores_and_text  # the task registry imports this module

    quality, text = scores_and_text(task.evaluate(as_student, probe, "eval", dev))
    if text is not None:
        np.save(tmp / f"{TEACHER_TEXT}.npy", np.array(text, dtype=str))
    meta[TEACHER_METRICS] = quality | task.size(as_student, probe, dev)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


@torch.no_grad()
def _write_outputs(
    task: Task,
    teacher: Teacher,
    data: PreparedData,
    data_cfg: Any,
    split: str,
    groups: set[str],
    params: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """The teacher outputs of `groups` for every item of `split`, as `<split>_<name>.npy`."""
    if not groups:
        return {}
    n = len(task.lengths(data, split))
    specs = task.output_arrays(groups, teacher, params, data_cfg)
    size = sum(n * math.prod(spec.shape) * np.dtype(spec.dtype).itemsize for spec in specs.values())
    free = shutil.disk_usage(data.path).free
    if size > 0.9 * free:  # hidden states and attention maps of a large teacher: keep them live
        raise InputError(
            f"loss.teacher_outputs: the teacher's {', '.join(sorted(groups))} for {n} {split} items take "
            f"{size / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free for the cache; "
            'set teacher_outputs = "live" (the teacher then runs on every batch) or cache fewer items'
        )
    arrays = {
        name: np.lib.format.open_memmap(data.path / f"{split}_{name}.npy", "w+", np.dtype(spec.dtype), (n, *spec.shape))
        for name, spec in specs.items()
    }
    logger.info("teacher outputs (%s) for %d %s items: %.1f MiB", ", ".join(sorted(groups)), n, split, size / 2**20)
    for start in range(0, n, task.teacher_batch):
        idx = np.arange(start, min(n, start + task.teacher_batch))
        out = task.teacher_outputs(teacher, task.batch(data, split, idx, device), groups, params)
        for name, value in out.items():
            arrays[name][(slice(start, start + len(idx)), *(slice(0, s) for s in value.shape[1:]))] = (
                value.cpu().numpy()
            )
    for arr in arrays.values():
        arr.flush()
    group_of = {value: group for group, values in task.outputs.items() for value in values}
    return {
        name: {"group": group_of[name], "shape": list(spec.shape), "dtype": spec.dtype, "cut": spec.cut}
        for name, spec in specs.items()
    }


__all__ = ["PreparedData", "cache_key", "ensure_teacher", "prepare"]
