"""Initialization from the teacher: exact when nothing is cut, keeps the most important units."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

from search_spaces import EncoderArch, bert_importance, build_encoder, init_bert_from_teacher, pick_layers

TEACHER = AutoConfig.for_model(
    "bert",
    vocab_size=97,
    max_position_embeddings=32,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=8,
    intermediate_size=128,
)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return AutoModel.from_config(TEACHER).eval()


def _batch():
    torch.manual_seed(1)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[2:, 8:] = 0
    return {"input_ids": torch.randint(1, 97, (4, 12)), "attention_mask": mask}


def test_pick_layers():
    assert pick_layers(6, 3, "first") == [0, 1, 2]
    assert pick_layers(6, 3, "every_other") == [1, 3, 5]
    assert pick_layers(6, 3, "even") == [0, 2, 5]
    assert pick_layers(6, 1, "even") == [5] and pick_layers(6, 6, "even") == list(range(6))
    assert pick_layers(6, 4, "every_other") == [0, 1, 3, 5]
    with pytest.raises(ValueError, match="layers"):
        pick_layers(2, 3, "first")


@pytest.mark.parametrize("pick", ["even", "first", "every_other"])
def test_same_architecture_reproduces_the_teacher(teacher, pick):
    arch = EncoderArch("bert", 4, 8, 8, 2.0, "teacher", pick)
    student = build_encoder(arch, TEACHER).eval()
    init_bert_from_teacher(student, teacher, _batch(), pick)
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            student(**batch).last_hidden_state, teacher(**batch).last_hidden_state, rtol=1e-5, atol=1e-5
        )


def test_width_slicing_keeps_the_most_important_units(teacher):
    scores = bert_importance(teacher, _batch())
    arch = EncoderArch(
        "bert", 2, 4, 4, 1.0, "teacher", "first"
    )  # hidden 16 of 64, 4 of 8 heads, 4 of 8 dims, FFN 16 of 128
    student = build_encoder(arch, TEACHER)
    layers = init_bert_from_teacher(student, teacher, _batch(), "first")
    assert layers == [0, 1]
    hidden = scores["hidden"].topk(16).indices.sort().values
    torch.testing.assert_close(
        student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight[:, hidden]
    )
    ffn = scores["ffn"][1].topk(16).indices.sort().values
    t_fc, s_fc = teacher.encoder.layer[1].intermediate.dense, student.encoder.layer[1].intermediate.dense
    torch.testing.assert_close(s_fc.weight, t_fc.weight[ffn][:, hidden])
    torch.testing.assert_close(s_fc.bias, t_fc.bias[ffn])
    # the kept heads are the 4 with the largest context norms, each keeping its 4 largest dimensions
    context = scores["context"][0]
    heads = context.norm(dim=1).topk(4).indices.sort().values
    rows = torch.cat([h * 8 + context[h].topk(4).indices.sort().values for h in heads.tolist()])
    q_t, q_s = teacher.encoder.layer[0].attention.self.query, student.encoder.layer[0].attention.self.query
    torch.testing.assert_close(q_s.weight, q_t.weight[rows][:, hidden])
    # every other unit scores lower than every kept one
    assert scores["ffn"][1][ffn].min() >= scores["ffn"][1][[i for i in range(128) if i not in ffn.tolist()]].max()


def test_teacher_init_starts_closer_to_the_teacher_than_random(teacher):
    batch = _batch()
    with torch.no_grad():
        target = teacher(**batch).last_hidden_state[..., :]
    arch = EncoderArch("bert", 2, 8, 8, 1.0, "teacher", "even")  # full width, half depth
    sliced, random = build_encoder(arch, TEACHER).eval(), build_encoder(arch, TEACHER).eval()
    init_bert_from_teacher(sliced, teacher, batch, "even")
    with torch.no_grad():
        err = [(m(**batch).last_hidden_state - target).pow(2).mean().item() for m in (sliced, random)]
    assert err[0] < err[1]


def test_wider_than_the_teacher_is_refused(teacher):
    student = build_encoder(EncoderArch("bert", 2, 8, 16, 1.0, "teacher"), TEACHER)
    with pytest.raises(ValueError, match="wider than the teacher"):
        init_bert_from_teacher(student, teacher, _batch(), "even")


def test_layer_map_matches_each_student_layer_to_its_source():
    from search_spaces import layer_map

    assert layer_map(3, 6, "first") == [0, 1, 2, 3]
    assert layer_map(3, 6, "every_other") == [0, 2, 4, 6]
    assert layer_map(2, 6) == [0, 1, 6]  # evenly spread, the last layer included
    assert layer_map(8, 4) == [0, 0, 1, 2, 2, 2, 3, 4, 4]  # deeper than the teacher


def _causal(family, **kw):
    from transformers import AutoModelForCausalLM

    if family == "gpt2":
        cfg = AutoConfig.for_model(
            "gpt2", vocab_size=97, n_positions=32, n_embd=32, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0, **kw
        )
    else:
        cfg = AutoConfig.for_model(
            family, vocab_size=97, max_position_embeddings=32, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, intermediate_size=64, bos_token_id=0, eos_token_id=0, **kw,
        )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral"])
@pytest.mark.parametrize("tied", [True, False])
def test_decoder_with_the_teachers_shape_reproduces_it(family, tied):
    from search_spaces import init_decoder_from_teacher

    teacher, student = _causal(family, tie_word_embeddings=tied), _causal(family, tie_word_embeddings=tied)
    torch.manual_seed(5)
    student.apply(
        lambda m: [torch.nn.init.normal_(p) for p in m.parameters(recurse=False)]
    )  # nothing left of the teacher
    ids = torch.randint(1, 97, (2, 10))
    assert init_decoder_from_teacher(student, teacher, {"input_ids": ids}, "even") == [0, 1, 2, 3]
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, teacher(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_slicing_keeps_the_most_important_units_and_runs(family):
    from search_spaces import DecoderArch, build_model, decoder_importance, init_decoder_from_teacher

    teacher = _causal(family)
    ids = {"input_ids": torch.randint(1, 97, (2, 10))}
    scores = decoder_importance(teacher, ids)
    kv = 2 if family == "gpt2" else 1
    arch = DecoderArch(family, 2, heads=2, kv_heads=kv, head_dim=8, ffn_ratio=1.0, tie_embeddings=True)
    student = build_model(arch, teacher.config, 32)
    assert init_decoder_from_teacher(student, teacher, ids, "first") == [0, 1]
    ffn = scores["ffn"][1].topk(16).indices.sort().values
    hidden = scores["hidden"].topk(16).indices.sort().values
    if family == "gpt2":
        torch.testing.assert_close(
            student.transformer.h[1].mlp.c_fc.weight, teacher.transformer.h[1].mlp.c_fc.weight[hidden][:, ffn]
        )
    else:
        up_t, up_s = teacher.model.layers[1].mlp.up_proj.weight, student.model.layers[1].mlp.up_proj.weight
        torch.testing.assert_close(up_s, up_t[ffn][:, hidden])
    assert torch.isfinite(student(**ids).logits).all()


def test_decoder_init_refuses_another_family():
    from search_spaces import init_decoder_from_teacher

    with pytest.raises(ValueError, match="cannot be sliced"):
        init_decoder_from_teacher(
            _causal("llama"), _causal("gpt2"), {"input_ids": torch.ones(1, 4, dtype=torch.long)}, "even"
        )


def test_gqa_regrouping_when_the_student_has_more_kv_heads():
    from search_spaces import DecoderArch, build_model, init_decoder_from_teacher

    teacher = _causal("llama")  # 4 heads in 2 KV groups
    student = build_model(
        DecoderArch("llama", 2, heads=4, kv_heads=4, head_dim=8, ffn_ratio=1.0, tie_embeddings=True), teacher.config, 32
    )
    ids = {"input_ids": torch.randint(1, 97, (2, 10))}
    init_decoder_from_teacher(student, teacher, ids, "even")
    k_t, k_s = teacher.model.layers[3].self_attn.k_proj.weight, student.model.layers[1].self_attn.k_proj.weight
    # full width is kept, so every student KV head is exactly one of the teacher's two
    for i in range(4):
        assert any(torch.equal(k_s[i * 8 : (i + 1) * 8], k_t[j * 8 : (j + 1) * 8]) for j in range(2))
    assert torch.isfinite(student(**ids).logits).all()
