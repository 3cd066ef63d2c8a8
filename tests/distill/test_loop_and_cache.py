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
    losses = distill(student, blocks, DistillConfig(steps=30, batch_size=8, lr=3e-3), seed=0).losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_distill_is_seeded(teacher_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    blocks = pack(corpus(), tokenizer, 32, 16)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        student = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
        runs.append(distill(student, blocks, DistillConfig(steps=5, batch_size=4), seed=3).losses)
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


def test_gradient_accumulation_matches_one_big_batch(teacher_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    blocks = pack(corpus(), tokenizer, 32, 16)
    weights = []
    for accum in (1, 4):
        student = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"])  # no dropout
        distill(student, blocks, DistillConfig(steps=3, batch_size=8, grad_accum=accum), seed=1)
        weights.append([p.detach().clone() for p in student.parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_early_stopping_keeps_the_best_weights(teacher_dirs, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    blocks = pack(corpus(), tokenizer, 32, 16)
    scores = iter([3.0, 2.0, 2.5, 4.0, 1.0, 1.0])
    seen = {}

    def validate(model):
        step = len(seen) + 1
        seen[step] = [p.detach().clone() for p in model.parameters()]
        return next(scores)

    student = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"])
    cfg = DistillConfig(steps=6, batch_size=4, eval_every=1, patience=2)
    result = distill(student, blocks, cfg, validate=validate, checkpoint_dir=tmp_path)
    assert result.stopped_early and result.steps == 4 and result.best_step == 2
    assert [s for s, _ in result.evals] == [1, 2, 3, 4]
    for a, b in zip(seen[2], student.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "best.pt").exists()


def test_full_config_takes_the_loss_of_the_brief_one():
    from distill import FullConfig

    brief = DistillConfig(temperature=3.0, top_k=7, kd_weight=0.7, steps=5)
    cfg = FullConfig(steps=900, grad_accum=2, batch_size=8).apply(brief)
    assert (cfg.temperature, cfg.top_k, cfg.kd_weight, cfg.steps, cfg.grad_accum) == (3.0, 7, 0.7, 900, 2)
    with pytest.raises(ValueError, match="grad_accum"):
        FullConfig(batch_size=6, grad_accum=4)


def test_relation_loss_hooks_live_only_during_its_forward_pass():
    from transformers import AutoConfig, AutoModel

    from distill.embedding import EmbeddingStudent, embedding_loss_fn

    cfg = AutoConfig.for_model(
        "bert",
        vocab_size=50,
        max_position_embeddings=16,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    student = EmbeddingStudent(AutoModel.from_config(cfg), 16, {"mode": "mean", "normalize": True})
    ids, mask = np.random.randint(1, 50, (4, 8)).astype(np.int32), np.ones((4, 8), np.int8)
    targets = {n: np.random.randn(4, 8, 16).astype(np.float16) for n in ("query", "key", "value")}
    targets["emb"] = np.random.randn(4, 16).astype(np.float32)
    loss = embedding_loss_fn(student, ids, mask, targets, DistillConfig(relation_weight=1.0), torch.device("cpu"), 2)
    value = loss(np.arange(4))
    assert torch.isfinite(value) and value.item() > 0
    query = student.encoder.encoder.layer[-1].attention.self.query
    assert not query._forward_hooks  # nothing left to capture tensors during validation or export
