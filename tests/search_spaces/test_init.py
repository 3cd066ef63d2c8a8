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


def _seq2seq_teacher(family, **kw):
    from transformers import AutoModelForSeq2SeqLM

    ids = {"vocab_size": 97, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
    if family == "marian":
        cfg = AutoConfig.for_model(
            "marian", d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32, decoder_vocab_size=97,
            **{"tie_word_embeddings": True, **ids, **kw},
        )  # fmt: skip
    else:
        cfg = AutoConfig.for_model(
            "t5", d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=3, num_decoder_layers=2,
            relative_attention_num_buckets=32, **ids, **kw,
        )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(cfg).eval()
    if family == "marian":  # a trained model's output bias is not zero (OPUS-MT bans <pad> there)
        model.final_logits_bias.normal_()
    return model


def _pairs_batch():
    torch.manual_seed(3)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    dmask = torch.ones(3, 7, dtype=torch.long)
    dmask[2, 4:] = 0
    return {
        "input_ids": torch.randint(2, 97, (3, 9)),
        "attention_mask": mask,
        "decoder_input_ids": torch.randint(2, 97, (3, 7)),
        "decoder_attention_mask": dmask,
    }


SEQ2SEQ_TEACHERS = [
    ("marian", {"share_encoder_decoder_embeddings": True}),
    ("marian", {"share_encoder_decoder_embeddings": False}),
    ("t5", {"feed_forward_proj": "relu"}),
    ("t5", {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}),  # T5 v1.1
]


@pytest.mark.parametrize(("family", "kw"), SEQ2SEQ_TEACHERS)
@pytest.mark.parametrize("pick", ["even", "first", "every_other"])
def test_seq2seq_with_the_teachers_shape_reproduces_it(family, kw, pick):
    from search_spaces import Seq2SeqArch, build_seq2seq, init_seq2seq_from_teacher

    teacher = _seq2seq_teacher(family, **kw)
    share = kw.get("share_encoder_decoder_embeddings", True)
    student = build_seq2seq(Seq2SeqArch(family, 3, 2, 4, 8, 2.0, share, "teacher", pick), teacher.config, 32).eval()
    torch.manual_seed(5)
    student.apply(lambda m: [torch.nn.init.normal_(p) for p in m.parameters(recurse=False) if p.requires_grad])
    batch = _pairs_batch()
    layers = init_seq2seq_from_teacher(student, teacher, batch, pick)
    assert sorted(len(v) for v in layers.values()) == [2, 3] and all(v == sorted(set(v)) for v in layers.values())
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, teacher(**batch).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("family", "kw"), SEQ2SEQ_TEACHERS[1:3])
def test_seq2seq_slicing_takes_each_stacks_layers_and_the_most_important_units(family, kw):
    from search_spaces import Seq2SeqArch, build_seq2seq, init_seq2seq_from_teacher, seq2seq_importance

    teacher = _seq2seq_teacher(family, **kw)
    batch = _pairs_batch()
    scores = seq2seq_importance(teacher, batch)
    share = kw.get("share_encoder_decoder_embeddings", True)
    student = build_seq2seq(Seq2SeqArch(family, 2, 1, 2, 8, 1.0, share, "teacher", "first"), teacher.config, 32)
    layers = init_seq2seq_from_teacher(student, teacher, None, "first", scores=scores)
    assert list(layers.values()) == [[0, 1], [0]]
    hidden = scores["hidden"].topk(16).indices.sort().values
    dec = next(k for k in layers if "decoder" in k)
    ffn = scores[dec]["ffn"][0].topk(16).indices.sort().values
    heads = scores[dec]["cross"][0].norm(dim=1).topk(2).indices.sort().values
    rows = torch.cat([h * 8 + torch.arange(8) for h in heads.tolist()])
    if family == "marian":
        t, s = teacher.model.decoder.layers[0], student.model.decoder.layers[0]
        torch.testing.assert_close(s.fc1.weight, t.fc1.weight[ffn][:, hidden])
        torch.testing.assert_close(s.encoder_attn.q_proj.weight, t.encoder_attn.q_proj.weight[rows][:, hidden])
        torch.testing.assert_close(student.final_logits_bias, teacher.final_logits_bias)
    else:
        t, s = teacher.decoder.block[0].layer, student.decoder.block[0].layer
        torch.testing.assert_close(s[2].DenseReluDense.wi.weight, t[2].DenseReluDense.wi.weight[ffn][:, hidden])
        torch.testing.assert_close(s[1].EncDecAttention.q.weight, t[1].EncDecAttention.q.weight[rows][:, hidden])
    with torch.no_grad():
        assert torch.isfinite(student(**batch).logits).all()
        out = student.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5)
    assert out.shape[0] == 3


def test_seq2seq_importance_is_blind_to_padding():
    from search_spaces import seq2seq_importance

    teacher = _seq2seq_teacher("marian")
    batch = _pairs_batch()
    padded = {k: torch.cat([v, torch.zeros(3, 5, dtype=v.dtype)], dim=1) for k, v in batch.items()}
    a, b = seq2seq_importance(teacher, batch), seq2seq_importance(teacher, padded)
    torch.testing.assert_close(a["hidden"], b["hidden"])
    torch.testing.assert_close(a["model.decoder.layers"]["cross"][1], b["model.decoder.layers"]["cross"][1])


def test_seq2seq_t5_keeps_one_set_of_heads_per_stack_with_their_relative_buckets():
    from search_spaces import Seq2SeqArch, build_seq2seq, init_seq2seq_from_teacher, seq2seq_importance

    teacher = _seq2seq_teacher("t5", feed_forward_proj="relu")  # 3 encoder layers, 4 heads of 8
    batch = _pairs_batch()
    scores = seq2seq_importance(teacher, batch)
    student = build_seq2seq(Seq2SeqArch("t5", 2, 1, 2, 8, 2.0, True, "teacher", "even"), teacher.config, 32)
    layers = init_seq2seq_from_teacher(student, teacher, None, "even", scores=scores)
    assert layers["encoder.block"] == [0, 2]
    norms = sum(scores["encoder.block"]["context"][j].norm(dim=1) for j in (0, 2))
    kept = norms.topk(2).indices.sort().values
    rows = torch.cat([h * 8 + torch.arange(8) for h in kept.tolist()])
    hidden = scores["hidden"].topk(16).indices.sort().values
    bias_t = teacher.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    bias_s = student.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    torch.testing.assert_close(bias_s, bias_t[:, kept])  # student head i keeps teacher head kept[i]'s buckets ...
    for i, j in enumerate(layers["encoder.block"]):  # ... and the same teacher head in every layer
        q_s = student.encoder.block[i].layer[0].SelfAttention.q.weight
        torch.testing.assert_close(q_s, teacher.encoder.block[j].layer[0].SelfAttention.q.weight[rows][:, hidden])


def test_a_marian_teacher_with_its_own_output_layer_is_not_sliced():
    from search_spaces import Seq2SeqSpace

    space = Seq2SeqSpace(families=("marian",), encoder_layers=(1, 2), heads=(2,), head_dim=(8,), ffn_ratio=(2.0,), init=("teacher",))
    space.check_teacher(_seq2seq_teacher("marian").config)
    with pytest.raises(ValueError, match=r"^init: a Marian teacher with an output layer of its own"):
        space.check_teacher(_seq2seq_teacher("marian", tie_word_embeddings=False).config)


def test_seq2seq_init_refuses_another_family_and_wider_students():
    from search_spaces import Seq2SeqArch, build_seq2seq, init_seq2seq_from_teacher

    teacher = _seq2seq_teacher("marian")
    t5 = build_seq2seq(Seq2SeqArch("t5", 2, 1, 2, 8, 1.0, True), teacher.config, 32)
    with pytest.raises(ValueError, match="cannot be sliced"):
        init_seq2seq_from_teacher(t5, teacher, _pairs_batch(), "even")
    wide = build_seq2seq(Seq2SeqArch("marian", 2, 1, 8, 8, 1.0, True), teacher.config, 32)
    with pytest.raises(ValueError, match="wider"):
        init_seq2seq_from_teacher(wide, teacher, _pairs_batch(), "even")
