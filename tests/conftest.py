"""Shared fixtures: tiny teachers built from configs and saved with save_pretrained."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The task contract is a module of tests that test modules subclass: its asserts explain failures too.
pytest.register_assert_rewrite("tests.distill.task_contract")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

TEACHER_FAMILIES = ("gpt2", "llama", "qwen2")
SLOW_FIXTURES = {"ray_local", "postgres_url", "server"}
"""fixtures that start Ray, a PostgreSQL server or `nas serve`: the tests using them are `slow`"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow`: tests that start Ray, a PostgreSQL server, a browser or a server, or run whole
    studies (marked by their module or by a fixture of `SLOW_FIXTURES`); `pytest -m "not slow"`
    leaves them out for a quick check, CI runs everything."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)][:30]


@pytest.fixture(scope="session")
def tokenizer():
    from distill.teachers import train_tokenizer

    return train_tokenizer(corpus(), 512)


def save_tiny_teacher(folder: Path, family: str, tokenizer) -> Path:
    """A 2-layer, 32-wide causal LM of `family` with `tokenizer`, saved as a HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    common = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if family == "gpt2":
        config = AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2, n_positions=64, **common)
    else:
        config = AutoConfig.for_model(
            family,
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def teacher_dirs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return {f: save_tiny_teacher(root / f, f, tokenizer) for f in TEACHER_FAMILIES}


def _write_docs(folder: Path) -> None:
    """The documentation topics as a JSON-lines file with a `body` column."""
    import json

    data = folder / "docs.jsonl"
    if not data.exists():
        data.write_text("\n".join(json.dumps({"body": t}) for t in corpus()))


def write_spec(folder: Path, teacher: Path, name: str = "tiny", extra: str = "") -> Path:
    """A study spec for a tiny teacher on a few documentation topics."""
    _write_docs(folder)
    spec = folder / f"{name}.toml"
    spec.write_text(
        f"""
[study]
name = "{name}"
trials = 3
seed = 0
concurrency = 2

[teacher]
model = "{teacher}"

[data]
source = "json"
files = ["docs.jsonl"]
text_column = "body"
block_length = 32
train_blocks = 64
eval_blocks = 8

[space]
families = ["gpt2", "llama", "qwen2"]
layers = [1, 2]
heads = [2, 4]
head_dim = [8, 16]
ffn_ratio = [2.0]
tie_embeddings = [true, false]

[brief]
steps = 4
batch_size = 4

[loss]
top_k = 8
{extra}
"""
    )
    return spec


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (starting Ray takes seconds)."""
    import ray

    from nas.search import start_ray

    start_ray(None, num_cpus=2)  # as `nas search` starts it: on 127.0.0.1
    yield
    ray.shutdown()


def save_tiny_sentence_encoder(folder: Path, tokenizer) -> Path:
    """A 4-layer, 64-wide BERT laid out as a sentence-transformers folder (mean pooling, normalized)."""
    import json

    import torch
    from transformers import AutoConfig, AutoModel

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.for_model(
        "bert",
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=8,
        intermediate_size=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False})
    )
    (folder / "2_Normalize").mkdir()
    return folder


def save_tiny_translator(folder: Path, tokenizer) -> Path:
    """A 2+2-layer, 32-wide Marian encoder-decoder with `tokenizer`, saved as a HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = AutoConfig.for_model(
        "marian",
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,  # as Marian's
    )
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def pair_tokenizer():
    """One BPE for English and German, ending sentences with </s> as Marian's does, trained on
    the training pairs of pycountry's catalogs."""
    from distill.tasks.pairs import PairDataConfig, load_pairs
    from distill.tasks.translation import train_pair_tokenizer

    splits, _ = load_pairs(PairDataConfig(package="pycountry", pair=("en", "de")), Path("."), 0)
    return train_pair_tokenizer(splits["train"], 600)


@pytest.fixture(scope="session")
def translation_teacher(tmp_path_factory, pair_tokenizer) -> Path:
    return save_tiny_translator(tmp_path_factory.mktemp("translation-teacher") / "marian", pair_tokenizer)


@pytest.fixture(scope="session")
def sentence_teacher(tmp_path_factory, tokenizer) -> Path:
    return save_tiny_sentence_encoder(tmp_path_factory.mktemp("sentence-teacher") / "encoder", tokenizer)


def write_embedding_spec(folder: Path, teacher: Path, name: str = "tinyemb", extra: str = "") -> Path:
    """An embedding study spec for the tiny sentence encoder on documentation paragraphs."""
    _write_docs(folder)
    spec = folder / f"{name}.toml"
    spec.write_text(
        f"""
[study]
name = "{name}"
task = "embedding"
trials = 3
concurrency = 2

[teacher]
model = "{teacher}"

[data]
source = "json"
files = ["docs.jsonl"]
text_column = "body"
block_length = 48
train_blocks = 64
valid_blocks = 8
eval_blocks = 24

[space]
layers = [1, 3]
heads = [2, 4, 8]
head_dim = [4, 8]
ffn_ratio = [1.0, 2.0]
init = ["random", "teacher"]
layer_pick = ["even", "first", "every_other"]

[brief]
steps = 5
batch_size = 8

[loss]
hidden = 1.0
relations = 1.0
{extra}
[objectives]
quality = ["cosine", "spearman"]
size = ["non_embedding_params", "latency_ms_b32"]
"""
    )
    return spec


def write_translation_spec(folder: Path, teacher: Path, name: str = "tinymt", extra: str = "") -> Path:
    """A translation study spec for the tiny Marian teacher on the catalogs pycountry ships."""
    spec = folder / f"{name}.toml"
    spec.write_text(
        f"""
[study]
name = "{name}"
task = "translation"
trials = 3
seed = 0
concurrency = 2

[teacher]
model = "{teacher}"

[data]
source = "gettext"
package = "pycountry"
pair = ["en", "de"]
max_length = 24
train_pairs = 64
valid_pairs = 8
eval_pairs = 16

[objectives]
quality = ["chrf"]
size = ["params"]

[space]
families = ["marian", "t5"]
encoder_layers = [1, 2]
decoder_layers = [1, 2]
heads = [2, 4]
head_dim = [8]

[brief]
steps = 4
batch_size = 4

[loss]
top_k = 8
{extra}
"""
    )
    return spec
