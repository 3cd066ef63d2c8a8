"""Shared fixtures: tiny teachers built from configs and saved with save_pretrained."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

TEACHER_FAMILIES = ("gpt2", "llama", "qwen2")


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


def write_spec(folder: Path, teacher: Path, name: str = "tiny", extra: str = "") -> Path:
    """A study spec for a tiny teacher on a few documentation topics."""
    import json

    data = folder / "docs.jsonl"
    if not data.exists():
        data.write_text("\n".join(json.dumps({"body": t}) for t in corpus()))
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

[distill]
steps = 4
batch_size = 4
top_k = 8
{extra}
"""
    )
    return spec


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (starting Ray takes seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
