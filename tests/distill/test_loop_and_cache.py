import numpy as np
import pytest
import torch

from distill import DataConfig, DistillConfig, TeacherConfig, TeacherTraining, distill, load_teacher, prepare
from distill.data import pack
from tests.conftest import corpus, write_spec


def test_distill_changes_parameters_and_lowers_the_loss(teacher_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"])
    before = [p.detach().clone() for p in student.parameters()]
    blocks = pack(corpus(), tokenizer, 32, 32)
    losses = distill(student, blocks, DistillConfig(steps=30, batch_size=8, lr=3e-3), seed=0)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_distill_is_seeded(teacher_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    blocks = pack(corpus(), tokenizer, 32, 16)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        student = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
        runs.append(distill(student, blocks, DistillConfig(steps=5, batch_size=4), seed=3))
    assert runs[0] == runs[1]


def test_teacher_cache_is_made_once_and_matches_the_teacher(tmp_path, teacher_dirs):
    from transformers import AutoModelForCausalLM

    write_spec(tmp_path, teacher_dirs["qwen2"])
    data = DataConfig(
        source="json", files=("docs.jsonl",), text_column="body", block_length=32, train_blocks=16, eval_blocks=4
    )
    args = dict(base_dir=tmp_path, cache_root=tmp_path / "cache", top_k=8, temperature=2.0)
    first = prepare(TeacherConfig(model=str(teacher_dirs["qwen2"])), data, **args)
    stamp = (first.path / "train_topk_logp.npy").stat().st_mtime_ns
    again = prepare(TeacherConfig(model=str(teacher_dirs["qwen2"])), data, **args)
    assert again.path == first.path and (again.path / "train_topk_logp.npy").stat().st_mtime_ns == stamp
    blocks, targets = first.blocks("train"), first.targets("train")
    assert blocks.shape == (16, 32) and targets.logprobs.shape == (16, 31, 8) and targets.temperature == 2.0
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["qwen2"])
    with torch.no_grad():
        logits = teacher(input_ids=torch.from_numpy(blocks[:2].astype(np.int64))).logits[:, :-1]
    top = torch.log_softmax(logits / 2.0, -1).topk(8, -1)
    assert np.array_equal(targets.indices[:2, :, 0], top.indices[..., 0].numpy())
    assert np.allclose(targets.logprobs[:2], top.values.numpy(), atol=2e-3)
    assert first.teacher_config().vocab_size == teacher.config.vocab_size


def test_demo_teacher_is_trained_once_then_loaded(tmp_path):
    cfg = TeacherConfig(
        model="./teacher", train=TeacherTraining(vocab_size=400, layers=1, hidden=32, heads=2, steps=3, batch_size=2)
    )
    model, tok = load_teacher(cfg, tmp_path, corpus(), block_length=32)
    assert (tmp_path / "teacher" / "model.safetensors").exists() and len(tok) == model.config.vocab_size
    stamp = (tmp_path / "teacher" / "model.safetensors").stat().st_mtime_ns
    load_teacher(cfg, tmp_path, corpus(), block_length=32)
    assert (tmp_path / "teacher" / "model.safetensors").stat().st_mtime_ns == stamp


def test_missing_teacher_folder_is_an_input_error(tmp_path):
    from distill.errors import InputError

    with pytest.raises(InputError, match="teacher.model: folder './nope' does not exist"):
        load_teacher(TeacherConfig(model="./nope"), tmp_path)
