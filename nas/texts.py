"""The text students and the teacher generated on held-out data, saved one line per item
beside the references it was scored against, so that other tools recompute the stored scores
(the task's `rescore` command, e.g. `sacrebleu texts/references.eval.txt -i
texts/trial-3.eval.txt -m bleu chrf -l en-de`). A repeated architecture has no file of its
own: it is its twin's (`duplicate_of`).

A task whose metrics score generated text returns that text from `evaluate` under `GENERATED`
and caches what it is scored against as `<split>_references` (see `distill.tasks.base`)."""

from __future__ import annotations

from pathlib import Path

from distill import PreparedData
from distill.cache import TEACHER_TEXT
from distill.files import file_written_whole

TEXTS = "texts"
"""The folder of a study (and of an export) holding generated text and its references"""


def write_lines(path: Path, lines: list[str]) -> Path:
    """One item per line, whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_written_whole(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def save_references(folder: Path, sets: dict[str, PreparedData]) -> None:
    """For each held-out set ("eval", then each `[[eval]]` set's name) that has references: its
    inputs, references and the teacher's own outputs, as `sources.<set>.txt`,
    `references.<set>.txt` and `teacher.<set>.txt`."""
    for name, data in sets.items():
        for what in ("sources", "references"):
            if (data.path / f"eval_{what}.npy").exists():
                write_lines(folder / f"{what}.{name}.txt", [str(r) for r in data.array(f"eval_{what}")])
        if (data.path / f"{TEACHER_TEXT}.npy").exists():
            write_lines(folder / f"teacher.{name}.txt", [str(r) for r in data.array(TEACHER_TEXT)])


def save_generated(folder: Path, prefix: str, outputs: dict[str, list[str]]) -> None:
    """A student's outputs on each held-out set, as `<prefix>.<set>.txt`."""
    for name, lines in outputs.items():
        write_lines(folder / f"{prefix}.{name}.txt", lines)
