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
    assert pick_layers(6, 3, "even") == [0, 2, 5] or pick_layers(6, 3, "even") == [0, 3, 5]
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
    from nas.trial import layer_map

    assert layer_map(EncoderArch("bert", 3, 4, 8, 1.0, "teacher", "first"), 6) == [0, 1, 2, 3]
    assert layer_map(EncoderArch("bert", 3, 4, 8, 1.0, "teacher", "every_other"), 6) == [0, 2, 4, 6]
    assert layer_map(EncoderArch("bert", 2, 4, 8, 1.0, "random"), 6)[-1] == 6
    assert layer_map(EncoderArch("bert", 8, 4, 8, 1.0, "random"), 4) == [0, 0, 1, 2, 2, 2, 3, 4, 4]
