"""The shared suite every search space must pass."""

import json

import optuna
import pytest
import torch
from transformers import AutoConfig

from distill.evaluate import param_counts
from search_spaces import (
    FAMILIES,
    SEQ2SEQ_FAMILIES,
    DecoderArch,
    DecoderSpace,
    EncoderArch,
    EncoderSpace,
    Seq2SeqArch,
    Seq2SeqSpace,
    build_encoder,
    build_model,
    build_seq2seq,
    target_vocab,
)
from search_spaces._encoder import LAYER_PICKS

TEACHER = AutoConfig.for_model(
    "gpt2", vocab_size=97, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=1
)
ENCODER_TEACHER = AutoConfig.for_model(
    "bert",
    vocab_size=97,
    max_position_embeddings=32,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=8,
    intermediate_size=128,
)


def _decoder(arch):
    a = DecoderArch.from_dict(arch)
    assert a.heads % a.kv_heads == 0 and a.hidden == a.heads * a.head_dim
    model = build_model(a, TEACHER, max_positions=32)
    assert model.config.eos_token_id == TEACHER.eos_token_id
    return a, model, a.param_counts(TEACHER.vocab_size, 32), lambda ids: model(input_ids=ids).logits.shape[-1] == 97


def _encoder(arch):
    a = EncoderArch.from_dict(arch)
    assert a.hidden == a.heads * a.head_dim
    model = build_encoder(a, ENCODER_TEACHER)
    assert model.config.pad_token_id == ENCODER_TEACHER.pad_token_id
    return (
        a,
        model,
        a.param_counts(97, 32),
        lambda ids: model(input_ids=ids).last_hidden_state.shape[-1] == a.hidden,
    )


SEQ2SEQ_TEACHERS = {
    "marian": AutoConfig.for_model(
        "marian", vocab_size=97, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ),
    "marian-own-target-vocabulary": AutoConfig.for_model(
        "marian", vocab_size=97, decoder_vocab_size=103, share_encoder_decoder_embeddings=False, d_model=16,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ),
    "t5": AutoConfig.for_model(
        "t5", vocab_size=97, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1, num_decoder_layers=1,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ),
}


def _seq2seq(teacher):
    def build(arch):
        a = Seq2SeqArch.from_dict(arch)
        assert a.hidden == a.heads * a.head_dim
        config = SEQ2SEQ_TEACHERS[teacher]
        model = build_seq2seq(a, config, max_positions=32)
        assert (model.config.pad_token_id, model.config.eos_token_id) == (config.pad_token_id, config.eos_token_id)
        feed_forward = model.config.feed_forward_proj if a.family == "t5" else "relu"
        target = target_vocab(config)
        return (
            a,
            model,
            a.param_counts(97, 32, feed_forward, target),
            lambda ids: model(input_ids=ids, decoder_input_ids=ids[:, :5]).logits.shape == (1, 5, target),
        )

    return build


# The shared suite: every search space, with how to build and run what it samples.
SPACES = {
    "decoder-all-families": (
        DecoderSpace(families=FAMILIES, layers=(1, 3), heads=(2, 3, 4, 6), head_dim=(8, 16)),
        _decoder,
    ),
    "decoder-no-gqa": (
        DecoderSpace(families=("llama", "mistral"), gqa=False, layers=(1, 2), heads=(4,), head_dim=(8,)),
        _decoder,
    ),
    "encoder": (
        EncoderSpace(
            layers=(1, 4), heads=(2, 4, 8), head_dim=(8, 16), init=("random", "teacher"), layer_pick=LAYER_PICKS
        ),
        _encoder,
    ),
    # Students of either family from a teacher of either family: the vocabulary is what they share.
    **{
        f"seq2seq-from-{teacher}": (
            Seq2SeqSpace(families=SEQ2SEQ_FAMILIES, encoder_layers=(1, 3), decoder_layers=(1, 2), heads=(2, 3, 4), head_dim=(8, 16)),
            _seq2seq(teacher),
        )
        for teacher in ("marian", "t5")
    },
    # A target vocabulary apart from the source's: Marian students with separate embeddings only.
    "seq2seq-own-target-vocabulary": (
        Seq2SeqSpace(families=("marian",), encoder_layers=(1, 2), heads=(2, 4), head_dim=(8,), share_embeddings=(False,)),
        _seq2seq("marian-own-target-vocabulary"),
    ),
}


def _samples(space, n=25):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        yield space.sample(trial), trial.params
        study.tell(trial, 0.0)


@pytest.mark.parametrize("space, build", SPACES.values(), ids=SPACES.keys())
def test_every_sampled_architecture_builds_with_the_expected_size(space, build):
    seen = set()
    for arch, _ in _samples(space):
        assert json.loads(json.dumps(arch)) == arch  # a plain dict that round-trips through JSON
        a, model, expected, run = build(arch)
        assert a.to_dict() == {k: arch[k] for k in a.to_dict()}
        assert param_counts(model) == expected, a.short()
        assert run(torch.randint(0, 97, (1, 8)))  # a forward pass with the expected output width
        seen.add(a.family)
    assert seen == set(getattr(space, "families", ("bert",)))


@pytest.mark.parametrize("space, build", SPACES.values(), ids=SPACES.keys())
def test_sampling_is_only_suggest_calls(space, build):
    for arch, params in _samples(space, 5):  # replaying the suggested values gives the same architecture
        assert space.sample(optuna.trial.FixedTrial(params)) == arch


def test_gqa_choices_are_divisors():
    space = DecoderSpace(families=("llama",), heads=(6,), head_dim=(8,))
    assert {a["kv_heads"] for a, _ in _samples(space, 40)} == {1, 2, 3, 6}


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


def test_t5_students_generate_with_any_sampled_depths():
    """transformers 5 sizes a T5 generation cache by the encoder's depth: the space never
    samples a T5 student with more decoder than encoder layers, and every one it samples generates."""
    space = Seq2SeqSpace(families=("t5",), encoder_layers=(1, 3), decoder_layers=(2, 3), heads=(2,), head_dim=(8,))
    depths = set()
    for arch, _ in _samples(space, 12):
        a = Seq2SeqArch.from_dict(arch)
        depths.add((a.encoder_layers, a.decoder_layers))
        model = build_seq2seq(a, SEQ2SEQ_TEACHERS["marian"], max_positions=32).eval()
        assert model.generate(input_ids=torch.randint(2, 97, (2, 5)), min_new_tokens=3, max_new_tokens=3).shape[1] == 4
    assert all(d <= e for e, d in depths) and (1, 1) in depths and any(d == 3 for _, d in depths)
    with pytest.raises(ValueError, match="^decoder_layers: "):
        Seq2SeqArch("t5", 1, 2, heads=2, head_dim=8, ffn_ratio=2.0, share_embeddings=True)


def _row_lengths(model):
    """The length of every weight row an edge runtime quantizes in blocks: the input width of
    each linear layer (GPT-2's Conv1D keeps its weight transposed) and of each embedding table
    (T5's relative-position buckets, a (buckets, heads) table, are not a weight matrix)."""
    from transformers.pytorch_utils import Conv1D

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            yield name, module.in_features
        elif isinstance(module, Conv1D):
            yield name, module.weight.shape[0]
        elif isinstance(module, torch.nn.Embedding) and "relative_attention_bias" not in name:
            yield name, module.embedding_dim


@pytest.mark.parametrize("multiple", [64, "llama.cpp"])
@pytest.mark.parametrize("space, build", SPACES.values(), ids=SPACES.keys())
def test_every_sampled_student_has_rows_in_whole_blocks_where_multiple_of_asks(space, build, multiple):
    """`[space] multiple_of` rounds head counts and FFN sizes so that every weight row of every
    sampled student is whole blocks of the runtime's quantization (llama.cpp: 256)."""
    import dataclasses

    from search_spaces._common import RUNTIME_MULTIPLES, head_choices

    rounded = dataclasses.replace(space, multiple_of=multiple)
    block = RUNTIME_MULTIPLES.get(multiple, multiple)
    assert rounded.multiple_of == block
    for arch, params in _samples(rounded, 6):
        a, model, expected, run = build(arch)
        assert a.heads in head_choices(rounded, a.head_dim) and a.multiple_of == block
        assert param_counts(model) == expected, a.short()
        bad = {name: n for name, n in _row_lengths(model) if n % block}
        assert not bad, (a.short(), bad)
        assert run(torch.randint(0, 97, (1, 8)))
        assert rounded.sample(optuna.trial.FixedTrial(params)) == arch  # still only suggest calls


def test_rounding_is_refused_where_it_makes_a_sliced_student_larger_than_its_teacher():
    fits = EncoderSpace(heads=(2,), head_dim=(8,), ffn_ratio=(2.0,), init=("teacher",), multiple_of=64)
    fits.check_teacher(ENCODER_TEACHER)  # 8 heads of 8: the teacher's own width
    with pytest.raises(ValueError, match="^heads: "):
        EncoderSpace(heads=(2,), head_dim=(8,), init=("teacher",), multiple_of="llama.cpp").check_teacher(ENCODER_TEACHER)
    with pytest.raises(ValueError, match="^multiple_of: unknown runtime 'gguf'"):
        DecoderSpace(multiple_of="gguf")
