"""Text data through `datasets`: documents split into train/held-out, tokenized and packed."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distill.errors import InputError

logger = logging.getLogger(__name__)

FILE_BUILDERS = ("text", "json", "csv", "parquet")
BUILTIN_CORPORA = ("pydoc-topics", "stdlib-docstrings", "package-docstrings", "english-prose")
STOPPING = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")
"""how a mixture's training split ends, as `datasets.interleave_datasets` names it"""
MIX_KEYS = ("mix", "stopping_strategy")
"""the keys of a data section that make it a mixture (every task's data section has them)"""


@dataclasses.dataclass(frozen=True)
class Part:
    """One source of a mixture (a `[[data.mix]]` table): where its examples come from (the keys
    an `[[eval]]` table may set, such as source, files, config, split) and its weight, the
    share of each split's examples drawn from it (weights are normalized to sum to 1)."""

    weight: float
    settings: dict[str, Any]

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight: must be a number above 0, got {self.weight!r}")


def check_mix(mix: tuple[Any, ...], stopping_strategy: str) -> tuple[Part, ...]:
    """A data section's `mix` as parts (tables become `Part`s), checked."""
    parts = tuple(p if isinstance(p, Part) else Part(**p) for p in mix)
    if stopping_strategy not in STOPPING:
        raise ValueError(f"stopping_strategy: must be one of {', '.join(STOPPING)}, got {stopping_strategy!r}")
    if not parts and stopping_strategy != STOPPING[0]:
        raise ValueError("stopping_strategy: only for a mixture of sources ([[data.mix]] tables)")
    return parts


def mixture(cfg: Any) -> list[tuple[float, Any]]:
    """The parts of a data section with a `mix`: (share, the section with the part's source),
    shares summing to 1; one part of share 1 (the section itself) without."""
    if not getattr(cfg, "mix", ()):  # one source (or a task's data section that has no mixtures)
        return [(1.0, cfg)]
    total = sum(p.weight for p in cfg.mix)
    alone = {"mix": (), "stopping_strategy": STOPPING[0]}
    return [(p.weight / total, dataclasses.replace(cfg, **alone, **p.settings)) for p in cfg.mix]


def part_name(cfg: Any) -> str:
    """How reports name a part of a mixture: its source, and its files or configuration."""
    fields = dataclasses.asdict(cfg)
    what = ", ".join(fields.get("files", ())) or fields.get("config") or fields.get("package") or ""
    return f"{fields['source']} ({what})" if what else fields["source"]


def load_examples(task: Any, cfg: Any, base_dir: Path, seed: int) -> DataSplits:
    """The task's examples of the data section `cfg` by split (`task.load_data`); of a mixture,
    each part's read on its own (its examples split as that part alone would be, so no
    example is in two splits) and interleaved with `datasets.interleave_datasets`, which
    draws each next example from a part picked by the weights (the study's seed): the
    training split until `stopping_strategy` says, the held-out splits until every part has
    given each of its examples once (all_exhausted_without_replacement: all of them are
    scored, none twice, and a limit such as eval_blocks keeps the weights' mix). An error in
    a part names its table."""
    import datasets

    if not getattr(cfg, "mix", ()):
        return _splits(task.load_data(cfg, base_dir, seed))
    named = [(f"mix {i}: {part_name(part)}, weight {share:.3g}", share, part) for i, (share, part) in enumerate(mixture(cfg))]
    parts, info = [], {}
    for i, (name, _, part) in enumerate(named):
        try:
            loaded = _splits(task.load_data(part, base_dir, seed))
        except InputError as e:
            text = str(e)
            raise InputError(f"data.mix[{i}].{text[5:]}" if text.startswith("data.") else f"data.mix[{i}]: {text}") from None
        parts.append(loaded)
        info |= {f"{name}, {what}": counts for what, counts in loaded.info.items()}
    out: dict[str, list[Any]] = {}
    taken: list[dict[str, int]] = [{} for _ in parts]
    for split in SPLITS:
        index = [datasets.Dataset.from_dict({"part": [i] * len(p[split]), "at": list(range(len(p[split])))}) for i, p in enumerate(parts)]
        usable = [(d, share) for d, (_, share, _) in zip(index, named) if len(d)]
        stop = cfg.stopping_strategy if split == "train" else "all_exhausted_without_replacement"
        drawn = datasets.interleave_datasets(
            [d for d, _ in usable], probabilities=[s / sum(s for _, s in usable) for _, s in usable], seed=seed, stopping_strategy=stop
        )
        out[split] = [parts[i][split][at] for i, at in zip(drawn["part"], drawn["at"])]
        for i in range(len(parts)):
            taken[i][split] = drawn["part"].count(i)
    info |= {name: taken[i] for i, (name, _, _) in enumerate(named)}
    return DataSplits(out, info)


def _splits(loaded: Any) -> DataSplits:
    return loaded if isinstance(loaded, DataSplits) else DataSplits(dict(loaded), {})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is cut (the `[data]` section of a study spec)."""

    EVAL_KEYS: ClassVar[tuple[str, ...]] = ("source", "config", "files", "text_column", "split", "eval_blocks")
    """what an `[[eval]]` table may set (where its text comes from, how much of it); the rest is `[data]`'s"""
    EVAL_LIMIT: ClassVar[str] = "eval_blocks"
    """the limit an `[[eval]]` set leaves at 0 (all of it) unless its table says"""

    source: str = "pydoc-topics"
    """a `datasets` builder for local files (text, json, csv, parquet), a dataset name on the
    hub, a local `datasets` folder (a path that exists, or starts with ./ ../ or /, relative to
    the spec's folder), `pydoc-topics` (Python's documentation topics, shipped with Python) or
    `stdlib-docstrings` (the docstrings of the standard library's modules, read from their
    sources: API reference prose, another register than the topics), `package-docstrings`
    (the prose of the installed third-party packages' docstrings) or `english-prose` (general
    English that ships in the gensim package's test data: a sample of Wikipedia articles and
    the Lee corpus of news articles)"""
    config: str = ""
    """the dataset's configuration (subset), for a hub dataset or local folder that has several"""
    files: tuple[str, ...] = ()
    """local files for a file builder, relative to the spec's folder"""
    text_column: str = "text"
    """the column that holds the text"""
    split: str = "train"
    """the split to read from the source"""
    eval_fraction: float = 0.1
    """share of documents held out for evaluation"""
    valid_fraction: float = 0.05
    """share of the other documents held out for validation (choosing the best checkpoint)"""
    block_length: int = 128
    """tokens per packed block"""
    train_blocks: int = 0
    """at most this many training blocks (0: all)"""
    eval_blocks: int = 64
    """at most this many held-out blocks (0: all)"""
    valid_blocks: int = 32
    """at most this many validation blocks (0: all)"""
    mix: tuple[Part, ...] = ()
    """several sources with weights (`[[data.mix]]` tables, each with the source keys of an
    `[[eval]]` table and a weight), in place of `source` and its keys"""
    stopping_strategy: str = "first_exhausted"
    """with `mix`: when the training split ends (`datasets.interleave_datasets`):
    first_exhausted (when a part runs out: the weights hold, no example repeated),
    all_exhausted (when every part has given all its examples: the smaller parts repeated
    to keep the weights) or all_exhausted_without_replacement (every example once: the
    weights set the order, and hold only until a part runs out)"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "mix", check_mix(tuple(self.mix), self.stopping_strategy))
        if self.source in FILE_BUILDERS and not self.files:
            raise ValueError(f"files: source {self.source!r} needs at least one file")
        if self.files and self.source not in FILE_BUILDERS:
            raise ValueError(f"source: files need a file builder, one of {', '.join(FILE_BUILDERS)}")
        if self.config and (self.source in BUILTIN_CORPORA or self.files):
            raise ValueError(f"config: only for a hub dataset or a local dataset folder, not source {self.source!r}")
        check_fractions(self.eval_fraction, self.valid_fraction)
        if self.block_length < 8:
            raise ValueError(f"block_length: must be at least 8, got {self.block_length}")
        if min(self.train_blocks, self.eval_blocks, self.valid_blocks) < 0:
            raise ValueError("train_blocks/eval_blocks/valid_blocks: must be >= 0 (0 means all)")

    def limit(self, split: str) -> int:
        """At most this many items of `split` (0: all)."""
        return {"train": self.train_blocks, "valid": self.valid_blocks, "eval": self.eval_blocks}[split]


SPLITS = ("train", "valid", "eval")


class DataSplits(dict):
    """A task's examples by split, with what reading them found (`info`, e.g. how many pairs
    were skipped and why), which the study stores beside its trials."""

    def __init__(self, splits: dict[str, list[Any]], info: dict[str, Any]) -> None:
        super().__init__(splits)
        self.info = info


def check_fractions(eval_fraction: float, valid_fraction: float) -> None:
    """The held-out shares of a `[data]` section, each strictly between 0 and 1."""
    for key, value in (("eval_fraction", eval_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{key}: must be between 0 and 1, got {value}")


def open_dataset(source: str, files: tuple[str, ...], split: str, base_dir: Path, config: str = "") -> Any:
    """A `datasets` split: of local `files` (relative to `base_dir`) with builder `source`, or
    of the dataset `source` when there are no files (`config`: its configuration), a local
    folder (relative to `base_dir`) or a hub name. What cannot be read raises `InputError`
    naming the `data` key to change (config, split, source)."""
    import datasets

    kwargs: dict[str, Any] = {"name": config or None}
    if files:
        paths = [str((base_dir / f).resolve()) for f in files]
        missing = [f for f, p in zip(files, paths) if not Path(p).exists()]
        if missing:
            raise InputError(f"data.files: {missing[0]!r} does not exist")
        kwargs["data_files"] = paths
        path = source
    else:
        path = dataset_path(source, base_dir)
    try:
        with _quiet("datasets"):  # its reader logs what fails; the error says it once
            return datasets.load_dataset(path, split=split, **kwargs)
    # ValueError: a configuration or split it does not have; OSError: not found, unreachable hub;
    # DatasetsError: a file its builder cannot parse
    except (ValueError, OSError, datasets.exceptions.DatasetsError) as exc:
        raise _unreadable(path, source, split, kwargs, exc) from None


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger `name` says nothing below CRITICAL inside the block."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def dataset_path(source: str, base_dir: Path) -> str:
    """A local dataset folder (absolute) or a hub name, as `[teacher]`'s model is resolved."""
    local = (base_dir / source).resolve()
    if source.startswith(("./", "../", "/")) or local.exists():
        if not local.is_dir():
            raise InputError(f"data.source: folder {source!r} does not exist; give a local dataset folder or a hub name")
        return str(local)
    return source


def _unreadable(path: str, source: str, split: str, kwargs: dict[str, Any], exc: Exception) -> InputError:
    """Why `load_dataset` failed, as the `data` key to change: the configuration the dataset
    wants named, a split it lacks, or else the source."""
    import datasets

    files = {"data_files": kwargs["data_files"]} if "data_files" in kwargs else {}
    config = kwargs["name"]
    what = "the data" if files else repr(source)
    try:
        with _quiet("datasets"):
            configs = datasets.get_dataset_config_names(path, **files)
    except Exception:  # noqa: BLE001 - only a better message depends on it
        configs = []
    if (config and configs and config not in configs) or (not config and len(configs) > 1):
        why = f"has no configuration {config!r}" if config else "has several configurations and needs one named"
        return InputError(f"data.config: {what} {why}; configurations: {', '.join(configs)}")
    try:
        with _quiet("datasets"):
            splits = datasets.get_dataset_split_names(path, config, **files)
    except Exception:  # noqa: BLE001 - only a better message depends on it
        splits = []
    if splits and split not in splits:
        return InputError(f"data.split: {what} has no split {split!r}; splits: {', '.join(splits)}")
    cause = exc.__cause__ if isinstance(exc, datasets.exceptions.DatasetsError) and exc.__cause__ else exc
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if files:
        return InputError(f"data.files: cannot read them as {source}: {first}")
    return InputError(f"data.source: cannot read {source!r}: {first}")


def check_text_column(ds: Any, column: str) -> None:
    """Raise `InputError` naming `data.text_column` unless `column` of the dataset `ds` holds text."""
    import datasets

    if column not in ds.column_names:
        raise InputError(f"data.text_column: {column!r} is not a column of the data; columns: {', '.join(ds.column_names)}")

    def is_text(feature: Any) -> bool:
        return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")

    feature = ds.features[column]
    if not is_text(feature):
        held = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
        text = [c for c in ds.column_names if is_text(ds.features[c])]
        raise InputError(
            f"data.text_column: {column!r} holds {held}, not text; text columns: {', '.join(text) or 'none'}"
        )


def split_sizes(n: int, eval_fraction: float, valid_fraction: float) -> dict[str, int]:
    """How many of `n` documents each split gets (as `datasets`' train_test_split rounds: the
    held-out shares up); raises `InputError` naming the fraction that leaves no training document."""
    n_eval = math.ceil(eval_fraction * n)
    n_valid = math.ceil(valid_fraction * (n - n_eval))
    n_train = n - n_eval - n_valid
    if n_train < 1:
        key = "eval_fraction" if n - n_eval < 1 else "valid_fraction"
        raise InputError(
            f"data.{key}: {n} documents leave none for training ({n_eval} held out for evaluation with eval_fraction "
            f"{eval_fraction}, {n_valid} for validation with valid_fraction {valid_fraction}); "
            "give more documents or smaller fractions"
        )
    return {"train": n_train, "valid": n_valid, "eval": n_eval}


def load_documents(cfg: DataConfig, base_dir: Path, seed: int) -> dict[str, list[str]]:
    """Documents split three ways (train, valid, eval); no document is in two splits, and no
    paragraph either: a paragraph of a held-out document that is also in an earlier split
    (train, then valid) is dropped from it, so boilerplate repeated across documents is never
    scored as held-out text."""
    import datasets

    if cfg.source == "pydoc-topics":
        from pydoc_data.topics import topics

        ds = datasets.Dataset.from_dict({cfg.text_column: [topics[k] for k in sorted(topics)]})
    elif cfg.source == "stdlib-docstrings":
        ds = datasets.Dataset.from_dict({cfg.text_column: stdlib_docstrings()})
    elif cfg.source == "package-docstrings":
        ds = datasets.Dataset.from_dict({cfg.text_column: package_docstrings()})
    elif cfg.source == "english-prose":
        ds = datasets.Dataset.from_dict({cfg.text_column: english_prose()})
    else:
        ds = open_dataset(cfg.source, cfg.files, cfg.split, base_dir, cfg.config)
    check_text_column(ds, cfg.text_column)
    ds = ds.select_columns([cfg.text_column]).filter(lambda r: bool(r[cfg.text_column]))
    if len(ds) < 3:
        raise InputError(f"data.source: needs at least 3 non-empty documents, found {len(ds)}")
    split_sizes(len(ds), cfg.eval_fraction, cfg.valid_fraction)
    held_out = ds.train_test_split(test_size=cfg.eval_fraction, seed=seed)
    valid = held_out["train"].train_test_split(test_size=cfg.valid_fraction, seed=seed)
    parts = {"train": valid["train"], "valid": valid["test"], "eval": held_out["test"]}
    return unique_paragraphs({split: list(part[cfg.text_column]) for split, part in parts.items()})


def _norm(para: str) -> str:
    return " ".join(para.split())


def unique_paragraphs(splits: dict[str, list[str]], min_chars: int = 40) -> dict[str, list[str]]:
    """Each split after the first without the paragraphs (at least `min_chars` characters,
    compared with whitespace collapsed) that an earlier split holds; documents left empty go."""
    seen: set[str] = set()  # the earlier splits' paragraphs
    out: dict[str, list[str]] = {}
    for split, docs in splits.items():
        here: set[str] = set()
        kept = []
        for doc in docs:
            paras = []
            for p in doc.split("\n\n"):
                n = _norm(p)
                if len(n) < min_chars:
                    paras.append(p)
                elif n not in seen:
                    paras.append(p)
                    here.add(n)
            if any(p.strip() for p in paras):
                kept.append("\n\n".join(paras))
        seen |= here
        out[split] = kept
    return out


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """Module, class and function docstrings of the standard library's top-level modules,
    parsed from their sources (nothing is imported), in a fixed order."""
    import sysconfig

    return _docstrings(sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")), min_chars)


def package_docstrings(min_chars: int = 200) -> list[str]:
    """The prose of the docstrings of the installed third-party packages (the folders of
    site-packages that hold a package, their tests left out; not the standard library, whose
    docstrings are `stdlib-docstrings`), parsed from their sources (nothing is imported):
    each docstring's paragraphs that read as sentences (`prose`), in a fixed order. What it
    holds depends on what is installed (the cache is keyed by the installed distributions)."""
    import sysconfig

    roots = sorted({Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")})
    packages = sorted(p for root in roots if root.is_dir() for p in root.iterdir() if (p / "__init__.py").is_file())
    paths = [f for p in packages for f in sorted(p.rglob("*.py")) if not {"test", "tests"} & set(f.relative_to(p).parts)]
    docs = ("\n\n".join(prose(d)) for d in _docstrings(paths, min_chars))
    return list(dict.fromkeys(d for d in docs if len(d) >= min_chars))  # templated docstrings once


ENGLISH_PROSE = (
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "lee_background.cor",
)
"""the files of gensim's test data that `english_prose` reads: Wikipedia articles (CC BY-SA)
as a MediaWiki XML dump, and the Lee background corpus (Lee, Pincombe and Welsh, 2005), 300
news articles, one per line"""


def english_prose() -> list[str]:
    """General English: the articles of the Wikipedia sample in gensim's test data as plain
    paragraphs (markup, templates, tables, references and lists removed; redirects left out),
    then the news articles of its Lee corpus, in a fixed order. The files are read from the
    installed gensim distribution; gensim itself is not imported."""
    import bz2
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("gensim")
    except importlib.metadata.PackageNotFoundError as exc:
        raise InputError("data.source: english-prose reads the gensim package's test data; pip install gensim") from exc
    folder = Path(dist.locate_file("gensim/test/test_data"))
    dump = bz2.decompress((folder / ENGLISH_PROSE[0]).read_bytes()).decode("utf-8")
    articles = [_wiki_text(m) for m in re.findall(r"<text[^>]*>(.*?)</text>", dump, re.S)]
    docs = [a for a in articles if a]
    news = (folder / ENGLISH_PROSE[1]).read_text(encoding="utf-8").splitlines()
    return docs + [_norm(line) for line in news if line.strip()]


def _wiki_text(markup: str) -> str:
    """An article's MediaWiki markup as plain paragraphs of at least 80 characters ("" for a
    redirect); a paragraph that keeps markup the patterns below do not undo is left out."""
    import html

    text = html.unescape(html.unescape(markup))  # the dump escapes its entities twice (&amp;nbsp;)
    if text.lstrip().upper().startswith("#REDIRECT"):
        return ""
    for _ in range(4):  # nested templates and tables, innermost first
        text = re.sub(r"\{\{[^{}]*\}\}|\{\|.*?\|\}", "", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>|<ref.*?</ref>|<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)  # [[target|label]] -> label
    text = re.sub(r"\[https?://\S+ ?([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}", "", text)  # bold and italics
    lines = (line.strip() for line in text.split("\n"))
    kept = (line for line in lines if len(line) >= 80 and line[0] not in "{|!=*[#:;")
    return "\n\n".join(line for line in kept if not any(m in line for m in ("{{", "}}", "[[", "]]", "|")))  # markup left


def _docstrings(paths: list[Path], min_chars: int) -> list[str]:
    """Module, class and function docstrings of at least `min_chars` characters in the files `paths`."""
    import ast

    docs = []
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
        docs.extend(d for n in nodes if (d := ast.get_docstring(n)) and len(d) >= min_chars)
    return docs


def prose(doc: str) -> list[str]:
    """The paragraphs of a docstring that read as sentences: at least 40 characters, four in
    five of them letters or spaces, ending like a sentence, not code (`>>>`), a literal
    block (`::`), a table or a list of parameters (an indented line)."""
    out = []
    for para in doc.split("\n\n"):
        text = " ".join(para.split())
        if (
            len(text) >= 40
            and text.endswith((".", "!", "?", '."', ".)"))
            and sum(c.isalpha() or c == " " for c in text) >= 0.8 * len(text)
            and ">>>" not in text
            and "::" not in text
            and not any(line.startswith((" ", "\t")) for line in para.strip("\n").splitlines()[1:])
            and not set(text) <= set("-=~*_ ")
        ):
            out.append(text)
    return out


def pack(texts: list[str], tokenizer: Any, block_length: int, max_blocks: int = 0) -> np.ndarray:
    """Tokenize documents, join them with the EOS token and cut into (N, block_length) int32."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        if eos is not None:
            ids.append(eos)
    n = len(ids) // block_length
    if max_blocks:
        n = min(n, max_blocks)
    if n == 0:
        raise InputError(
            f"data.block_length: {len(ids)} tokens do not fill one block of {block_length}; "
            "give more text or a smaller data.block_length"
        )
    return np.asarray(ids[: n * block_length], dtype=np.int32).reshape(n, block_length)


def paragraphs(docs: list[str], min_chars: int = 40) -> list[str]:
    """Documents cut at blank lines into paragraphs of at least `min_chars` characters."""
    out = []
    for doc in docs:
        for para in doc.split("\n\n"):
            para = _norm(para)
            if len(para) >= min_chars:
                out.append(para)
    return out


def encode_texts(
    texts: list[str], tokenizer: Any, max_length: int, max_items: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, max_length) int32 and attention mask (N, max_length) int8, padded and truncated."""
    if max_items:
        texts = texts[:max_items]
    if tokenizer.pad_token is None:  # BPE tokenizers of causal models: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if not texts:
        raise InputError("data: no paragraph of text to encode; give more text")
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int8)
