"""Slicing from the teacher's safetensors files, a tensor at a time, gives the student that
slicing from the loaded teacher gives, and reads only the weights of the layers it takes."""

import copy
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from search_spaces import (
    DecoderArch,
    EncoderArch,
    SafetensorsWeights,
    Seq2SeqArch,
    bert_importance,
    build_encoder,
    build_model,
    build_seq2seq,
    decoder_importance,
    init_bert_from_teacher,
    init_decoder_from_teacher,
    init_seq2seq_from_teacher,
    safetensors_files,
    seq2seq_importance,
)
from tests.search_spaces.test_init import TEACHER, _batch, _causal, _pairs_batch, _seq2seq_teacher


def _bert():
    from transformers import AutoModel

    torch.manual_seed(0)
    teacher = AutoModel.from_config(TEACHER).eval()
    student = build_encoder(EncoderArch("bert", 2, 4, 8, 1.0, "teacher", "every_other"), TEACHER)
    return teacher, student, "AutoModel", init_bert_from_teacher, bert_importance(teacher, _batch())


def _decoder(family, tied_teacher, tied_student, kv):
    teacher = _causal(family, tie_word_embeddings=tied_teacher)
    arch = DecoderArch(family, 2, heads=2, kv_heads=kv, head_dim=8, ffn_ratio=1.0, tie_embeddings=tied_student)
    student = build_model(arch, teacher.config, 32)
    scores = decoder_importance(teacher, {"input_ids": torch.randint(1, 97, (2, 10))})
    return teacher, student, "AutoModelForCausalLM", init_decoder_from_teacher, scores


def _seq2seq(family, **kw):
    teacher = _seq2seq_teacher(family, **kw)
    share = kw.get("share_encoder_decoder_embeddings", True)
    student = build_seq2seq(Seq2SeqArch(family, 2, 1, 2, 8, 1.0, share, "teacher", "even"), teacher.config, 32)
    return teacher, student, "AutoModelForSeq2SeqLM", init_seq2seq_from_teacher, seq2seq_importance(teacher, _pairs_batch())


CASES = {
    "bert": _bert,
    "gpt2 tied": lambda: _decoder("gpt2", True, True, 2),
    "gpt2 tied, untied student": lambda: _decoder("gpt2", True, False, 2),
    "llama untied": lambda: _decoder("llama", False, False, 1),
    "qwen2 tied, untied student": lambda: _decoder("qwen2", True, False, 1),
    "marian shared": lambda: _seq2seq("marian", share_encoder_decoder_embeddings=True),
    "t5": lambda: _seq2seq("t5", feed_forward_proj="relu"),
    "t5 v1.1": lambda: _seq2seq("t5", feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shards", [False, True])
def test_slicing_from_the_files_equals_slicing_from_the_loaded_teacher(tmp_path, case, shards):
    teacher, student, auto_class, init, scores = CASES[case]()
    teacher.save_pretrained(tmp_path, max_shard_size="20KB" if shards else "1GB")
    files = safetensors_files(tmp_path)
    assert (len(files) > 1) == shards
    lazy = copy.deepcopy(student)
    taken = init(student, teacher, None, "even" if "bert" not in case else "every_other", scores=scores)
    weights = SafetensorsWeights(files, teacher.config, auto_class)
    assert init(lazy, weights, None, "even" if "bert" not in case else "every_other", scores=scores) == taken
    for (name, want), (_, got) in zip(student.state_dict().items(), lazy.state_dict().items()):
        assert torch.equal(want, got), name
    # only the layers taken were read
    picked = {str(j) for layers in (taken.values() if isinstance(taken, dict) else [taken]) for j in layers}
    read_layers = {m.group(1) for key in weights.read if (m := re.search(r"\.(\d+)\.", key)) and "relative_attention_bias" not in key}
    assert read_layers <= picked
    stored = {key for f in files for key in load_file(f)}
    assert set(weights.read) < stored


def test_a_checkpoint_without_the_base_models_prefix_is_read(tmp_path):
    """The hub's GPT-2 stores `h.0.attn...` where the model names `transformer.h.0.attn...`."""
    teacher, student, auto_class, init, scores = _decoder("gpt2", True, True, 2)
    teacher.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in stored.items()}, tmp_path / "model.safetensors")
    lazy = copy.deepcopy(student)
    init(student, teacher, None, "even", scores=scores)
    init(lazy, SafetensorsWeights(safetensors_files(tmp_path), teacher.config, auto_class), None, "even", scores=scores)
    for (name, want), (_, got) in zip(student.state_dict().items(), lazy.state_dict().items()):
        assert torch.equal(want, got), name


def test_a_bf16_checkpoint_is_sliced_from_its_own_values(tmp_path):
    teacher, student, auto_class, init, scores = _decoder("llama", False, False, 1)
    teacher.to(torch.bfloat16).save_pretrained(tmp_path)
    init(student, SafetensorsWeights(safetensors_files(tmp_path), teacher.config, auto_class), None, "even", scores=scores)
    torch.testing.assert_close(student.model.norm.weight, teacher.model.norm.weight.float()[scores["hidden"].topk(16).indices.sort().values])


def test_a_weight_the_files_lack_is_a_key_error(tmp_path):
    teacher, student, auto_class, init, scores = _decoder("llama", False, False, 1)
    teacher.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in stored.items() if "mlp" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(KeyError, match="mlp"):
        init(student, SafetensorsWeights(safetensors_files(tmp_path), teacher.config, auto_class), None, "even", scores=scores)
