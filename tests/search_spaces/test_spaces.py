"""The shared suite every search space must pass."""

import json

import optuna
import pytest
import torch
from transformers import AutoConfig

from distill.evaluate import param_counts
from search_spaces import FAMILIES, DecoderArch, DecoderSpace, build_model

SPACES = {
    "decoder-all-families": DecoderSpace(families=FAMILIES, layers=(1, 3), heads=(2, 3, 4, 6), head_dim=(8, 16)),
    "decoder-no-gqa": DecoderSpace(families=("llama", "mistral"), gqa=False, layers=(1, 2), heads=(4,), head_dim=(8,)),
}
TEACHER = AutoConfig.for_model(
    "gpt2", vocab_size=97, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=1
)


def _samples(space, n=25):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        yield space.sample(trial)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
def test_every_sampled_architecture_builds_with_the_expected_size(space):
    seen = set()
    for arch in _samples(space):
        assert json.loads(json.dumps(arch)) == arch  # a plain dict that round-trips through JSON
        a = DecoderArch.from_dict(arch)
        assert a.heads % a.kv_heads == 0 and a.hidden == a.heads * a.head_dim
        model = build_model(a, TEACHER, max_positions=32)
        assert model.config.vocab_size == TEACHER.vocab_size
        assert model.config.eos_token_id == TEACHER.eos_token_id
        assert param_counts(model) == a.param_counts(TEACHER.vocab_size, 32), a.short()
        out = model(input_ids=torch.randint(0, 97, (1, 8))).logits
        assert out.shape == (1, 8, 97)
        seen.add(a.family)
    assert seen == set(space.families)


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
def test_sampling_is_only_suggest_calls(space):
    arch = next(_samples(space, 1))
    params = {"family": arch["family"], "layers": arch["layers"], "heads": arch["heads"], "head_dim": arch["head_dim"]}
    params |= {"ffn_ratio": arch["ffn_ratio"], "tie_embeddings": arch["tie_embeddings"]}
    if arch["family"] != "gpt2" and space.gqa:
        params[f"kv_heads_of_{arch['heads']}"] = arch["kv_heads"]
    assert space.sample(optuna.trial.FixedTrial(params)) == arch


def test_gqa_choices_are_divisors():
    space = DecoderSpace(families=("llama",), heads=(6,), head_dim=(8,))
    assert {a["kv_heads"] for a in _samples(space, 40)} == {1, 2, 3, 6}


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"layers": (3, 1)}, "layers"),
        ({"heads": ()}, "heads"),
        ({"families": ("bert",)}, "families"),
        ({"head_dim": (7,)}, "head_dim"),
        ({"tie_embeddings": ()}, "tie_embeddings"),
    ],
)
def test_empty_or_invalid_bounds_are_refused(kwargs, key):
    with pytest.raises(ValueError, match=f"^{key}:"):
        DecoderSpace(**kwargs)


def test_invalid_architectures_are_impossible():
    with pytest.raises(ValueError, match="kv_heads"):
        DecoderArch("llama", 2, heads=8, kv_heads=3, head_dim=8, ffn_ratio=2.0, tie_embeddings=True)
    with pytest.raises(ValueError, match="gpt2"):
        DecoderArch("gpt2", 2, heads=8, kv_heads=2, head_dim=8, ffn_ratio=2.0, tie_embeddings=True)
