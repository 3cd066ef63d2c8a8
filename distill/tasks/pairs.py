"""Sentence pairs for translation students, through `datasets`: the hub's translation layout
(`{"translation": {"en": ..., "de": ...}}`, as WMT and OPUS sets use), two text columns, or
gettext catalogs (`.po`/`.mo`, read with polib), where real human translations ship.

Pairs that teach nothing are skipped and counted: an empty side, a target equal to its source
(gettext's untranslated entries), fuzzy catalog entries, and a source seen before (its first
translation is kept). Splits are drawn by source sentence with a fixed seed, so no source
sentence is in two splits.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections import Counter
from pathlib import Path
from typing import ClassVar

from distill.data import Part, check_fractions, check_mix, open_dataset
from distill.errors import InputError

logger = logging.getLogger(__name__)

PAIR_FILE_BUILDERS = ("json", "csv", "parquet")
GETTEXT = "gettext"
SKIPS = ("empty", "untranslated", "fuzzy", "repeated source")


@dataclasses.dataclass(frozen=True)
class PairDataConfig:
    """Where the sentence pairs come from and how long they may be (the `[data]` section of a
    translation study)."""

    EVAL_KEYS: ClassVar[tuple[str, ...]] = (
        "source", "config", "files", "package", "translation_column", "source_column", "target_column", "split", "eval_pairs",
    )  # fmt: skip
    """what an `[[eval]]` table may set (where its pairs come from, how many); the rest is `[data]`'s"""
    EVAL_LIMIT: ClassVar[str] = "eval_pairs"
    """the limit an `[[eval]]` set leaves at 0 (all of it) unless its table says"""

    source: str = GETTEXT
    """`gettext` (catalogs: `files`, or those a Python `package` ships), a `datasets` builder
    for local files (json, csv, parquet), a dataset name on the hub or a local `datasets` folder
    (a path that exists, or starts with ./ ../ or /, relative to the spec's folder)"""
    config: str = ""
    """the dataset's configuration (subset), for a hub dataset or local folder that has
    several (WMT's are language pairs: "de-en")"""
    pair: tuple[str, str] = ("en", "de")
    """[source language, target language]; for gettext the source is the catalogs' msgid
    language and the target their own"""
    files: tuple[str, ...] = ()
    """local files (catalogs for gettext), relative to the spec's folder"""
    package: str = ""
    """gettext only: an installed Python package whose catalogs of the target language
    (`locales/<lang>/LC_MESSAGES/*.po|*.mo`) are the data"""
    translation_column: str = "translation"
    """the column of {language: sentence} dicts (the hub's translation layout)"""
    source_column: str = ""
    """with `target_column`: two text columns instead of the translation layout"""
    target_column: str = ""
    split: str = "train"
    """the split to read from a `datasets` source"""
    eval_fraction: float = 0.1
    """share of source sentences held out for evaluation"""
    valid_fraction: float = 0.05
    """share of the other source sentences held out for validation"""
    max_length: int = 64
    """tokens per sentence, each side (longer ones are cut; generation stops there too)"""
    beams: int = 1
    """beam width of the generations that students and teacher are scored on (1: greedy)"""
    source_prefix: str = ""
    """text put before every source sentence, as the teacher expects it: T5's task prefix
    ("translate English to German: ") or a multilingual Marian model's target token (">>deu<< ")"""
    lang_codes: tuple[str, ...] = ()
    """[source code, target code] of a multilingual teacher's tokenizer (mBART-50: "en_XX",
    "de_DE"; NLLB: "eng_Latn", "deu_Latn"; M2M100: "en", "de"): its source and target
    languages, and the token generation starts with"""
    train_pairs: int = 0
    """at most this many training pairs (0: all)"""
    eval_pairs: int = 200
    """at most this many held-out pairs (0: all)"""
    valid_pairs: int = 100
    """at most this many validation pairs (0: all)"""
    mix: tuple[Part, ...] = ()
    """several sources with weights (`[[data.mix]]` tables, each with the source keys of an
    `[[eval]]` table and a weight), in place of `source` and its keys"""
    stopping_strategy: str = "first_exhausted"
    """with `mix`: when the training split ends (`datasets.interleave_datasets`):
    first_exhausted (when a part runs out: the weights hold, no pair repeated),
    all_exhausted (when every part has given all its pairs: the smaller parts repeated to
    keep the weights) or all_exhausted_without_replacement (every pair once: the weights set
    the order, and hold only until a part runs out)"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "mix", check_mix(tuple(self.mix), self.stopping_strategy))
        object.__setattr__(self, "pair", tuple(self.pair))
        object.__setattr__(self, "lang_codes", tuple(self.lang_codes))
        if self.lang_codes and (len(self.lang_codes) != 2 or not all(isinstance(c, str) and c for c in self.lang_codes)):
            raise ValueError(f"lang_codes: must be [source code, target code] of the teacher's tokenizer, got {list(self.lang_codes)}")
        if len(self.pair) != 2 or not all(isinstance(p, str) and p for p in self.pair) or self.pair[0] == self.pair[1]:
            raise ValueError(f"pair: must be [source language, target language], two different codes, got {list(self.pair)}")
        if self.source == GETTEXT:
            if bool(self.files) == bool(self.package):
                raise ValueError("files: gettext data needs catalog files or a package that ships catalogs, one of the two")
        elif self.package:
            raise ValueError(f"package: only gettext data reads a package's catalogs, not source {self.source!r}")
        elif self.source in PAIR_FILE_BUILDERS and not self.files:
            raise ValueError(f"files: source {self.source!r} needs at least one file")
        elif self.files and self.source not in PAIR_FILE_BUILDERS:
            raise ValueError(f"source: files need gettext or a file builder, one of {', '.join(PAIR_FILE_BUILDERS)}")
        if self.config and (self.source == GETTEXT or self.files):
            raise ValueError(f"config: only for a hub dataset or a local dataset folder, not source {self.source!r}")
        if bool(self.source_column) != bool(self.target_column):
            raise ValueError("source_column: two text columns need both source_column and target_column")
        check_fractions(self.eval_fraction, self.valid_fraction)
        if self.max_length < 4:
            raise ValueError(f"max_length: must be at least 4, got {self.max_length}")
        if self.beams < 1:
            raise ValueError(f"beams: must be at least 1 (1: greedy), got {self.beams}")
        if min(self.train_pairs, self.eval_pairs, self.valid_pairs) < 0:
            raise ValueError("train_pairs/eval_pairs/valid_pairs: must be >= 0 (0 means all)")

    def limit(self, split: str) -> int:
        """At most this many pairs of `split` (0: all)."""
        return {"train": self.train_pairs, "valid": self.valid_pairs, "eval": self.eval_pairs}[split]


def package_catalogs(package: str, language: str) -> list[Path]:
    """The gettext catalogs of `language` that an installed package ships, in name order."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is not installed
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"data.package: {package!r} is not an installed Python package")
    found: list[Path] = []
    for root in spec.submodule_search_locations:
        found += [p for p in Path(root).glob(f"**/locales/{language}/LC_MESSAGES/*") if p.suffix in (".po", ".mo")]
    if not found:
        raise InputError(f"data.pair: package {package!r} ships no catalog for target language {language!r}")
    return sorted(found, key=lambda p: p.name)


def read_catalog(path: Path, language: str) -> tuple[list[tuple[str, str]], Counter]:
    """(msgid, msgstr) of a `.po` or `.mo` catalog, with the entries skipped by reason."""
    import polib

    if path.suffix not in (".po", ".mo"):
        raise InputError(f"data.files: {path.name} is not a gettext catalog: gettext data reads .po and .mo files")
    try:
        catalog = polib.mofile(str(path)) if path.suffix == ".mo" else polib.pofile(str(path))
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:  # struct: a truncated .mo
        raise InputError(f"data.files: {path.name} is not a gettext catalog (.po or .mo): {exc}") from None
    declared = (catalog.metadata.get("Language") or "").replace("-", "_").split("_")[0]
    if declared and declared != language.replace("-", "_").split("_")[0]:
        raise InputError(f"data.pair: {path.name} translates into {declared!r}, not the target language {language!r}")
    pairs, skipped = [], Counter()
    for entry in catalog:
        if entry.obsolete or not entry.msgid:  # the header, or an entry no longer in the sources
            continue
        target = entry.msgstr or (entry.msgstr_plural or {}).get(0, "")
        if "fuzzy" in entry.flags:
            skipped["fuzzy"] += 1
        elif not target.strip():
            skipped["empty"] += 1
        elif target.strip() == entry.msgid.strip():
            skipped["untranslated"] += 1
        else:
            pairs.append((entry.msgid, target))
    return pairs, skipped


def _raw_pairs(cfg: PairDataConfig, base_dir: Path) -> tuple[list[tuple[str, str]], Counter]:
    if cfg.source == GETTEXT:
        paths = package_catalogs(cfg.package, cfg.pair[1]) if cfg.package else [base_dir / f for f in cfg.files]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise InputError(f"data.files: {missing[0].name!r} does not exist")
        pairs, skipped = [], Counter()
        for path in paths:
            got, why = read_catalog(path, cfg.pair[1])
            pairs += got
            skipped += why
        return pairs, skipped
    ds = open_dataset(cfg.source, cfg.files, cfg.split, base_dir, cfg.config)
    if cfg.source_column:
        for key in ("source_column", "target_column"):
            if getattr(cfg, key) not in ds.column_names:
                raise InputError(
                    f"data.{key}: {getattr(cfg, key)!r} is not a column of the data; columns: {', '.join(ds.column_names)}"
                )
        rows = zip(ds[cfg.source_column], ds[cfg.target_column])
    else:
        if cfg.translation_column not in ds.column_names:
            raise InputError(
                f"data.translation_column: {cfg.translation_column!r} is not a column of the data; "
                f"columns: {', '.join(ds.column_names)} (or give source_column and target_column)"
            )
        column = ds[cfg.translation_column]
        languages = set(column[0]) if len(column) and isinstance(column[0], dict) else set()
        absent = [lang for lang in cfg.pair if lang not in languages]
        if absent:
            raise InputError(
                f"data.pair: the data has no {absent[0]!r} side; its languages: {', '.join(sorted(languages)) or 'none'}"
            )
        rows = ((t[cfg.pair[0]], t[cfg.pair[1]]) for t in column)
    pairs, skipped = [], Counter()
    for src, tgt in rows:
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise InputError(f"data.source: pairs must be text on both sides; found {type(src).__name__} and {type(tgt).__name__}")
        if not src.strip() or not tgt.strip():
            skipped["empty"] += 1
        elif src.strip() == tgt.strip():
            skipped["untranslated"] += 1
        else:
            pairs.append((src, tgt))
    return pairs, skipped


def load_pairs(cfg: PairDataConfig, base_dir: Path, seed: int) -> tuple[dict[str, list[tuple[str, str]]], dict[str, int]]:
    """Pairs split three ways (train, valid, eval) by source sentence, and what was read and
    skipped, by reason (also logged)."""
    import numpy as np

    raw, skipped = _raw_pairs(cfg, base_dir)
    pairs: dict[str, str] = {}  # source sentence -> its first translation
    for src, tgt in raw:
        key = " ".join(src.split())
        if key in pairs:
            skipped["repeated source"] += 1
        else:
            pairs[key] = " ".join(tgt.split())
    counts = {"read": len(raw) + sum(skipped[k] for k in ("empty", "untranslated", "fuzzy")), "kept": len(pairs)}
    counts |= {k: skipped[k] for k in SKIPS}
    if len(pairs) < 3:  # the counts are in the one error line
        raise InputError(
            f"data.source: needs at least 3 usable {cfg.pair[0]}-{cfg.pair[1]} pairs after skipping, found {len(pairs)} "
            f"({', '.join(f'{counts[k]} {k}' for k in SKIPS)})"
        )
    logger.info(
        "%d pairs kept of %d read; skipped: %s", counts["kept"], counts["read"],
        ", ".join(f"{counts[k]} {k}" for k in SKIPS),
    )
    sources = list(pairs)
    order = np.random.default_rng(seed).permutation(len(sources))
    n_eval = max(1, round(cfg.eval_fraction * len(sources)))
    n_valid = max(1, round(cfg.valid_fraction * (len(sources) - n_eval)))
    cut = {"eval": order[:n_eval], "valid": order[n_eval : n_eval + n_valid], "train": order[n_eval + n_valid :]}
    # In drawn order, so that a limit (`eval_pairs`, `train_pairs`) keeps a random sample of
    # the split rather than the first catalogs' entries.
    splits = {name: [(sources[i], pairs[sources[i]]) for i in idx] for name, idx in cut.items()}
    return {name: splits[name] for name in ("train", "valid", "eval")}, counts


__all__ = ["PairDataConfig", "load_pairs", "package_catalogs", "read_catalog"]
