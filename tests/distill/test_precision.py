"""Mixed precision (`[resources] precision`): what "auto" resolves to, what runs in bfloat16
and what stays fp32, teachers loaded in the precision's dtype, one cache per precision."""

import numpy as np
import pytest
import torch

from distill import Budget, DataConfig, LossConfig, TeacherConfig, prepare, train
from distill.data import pack
from distill.precision import autocast, computing_in, current, resolve, teacher_dtype
from distill.tasks import get_task
from distill.tasks.causal_lm import lm_loss
from distill.teachers import teacher_source
from tests.conftest import corpus, write_spec

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "want"),
    [({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16"), ({"bf16": True}, "bf16"), ({"avx2": True}, "fp32")],
)
def test_auto_is_bf16_only_on_cpus_that_compute_it(monkeypatch, flags, want):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert resolve("auto", CPU) == want
    assert resolve("fp32", CPU) == "fp32" and resolve("bf16", CPU) == "bf16"  # asked for: whatever the CPU


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision: must be one of auto, bf16, fp32, got 'fp16'"):
        resolve("fp16", CPU)
    with pytest.raises(ValueError, match="resolved"):
        with computing_in("auto"):
            pass


def test_matrix_products_run_in_bf16_and_weights_stay_fp32():
    layer = torch.nn.Linear(16, 16)
    x = torch.randn(2, 16)
    assert current() == "fp32" and teacher_dtype() == torch.float32
    with computing_in("bf16"):
        with autocast(CPU):
            assert layer(x).dtype == torch.bfloat16
        assert teacher_dtype() == torch.bfloat16
    with computing_in("fp32"), autocast(CPU):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32 and current() == "fp32"  # the block is left as it was


def test_a_bf16_run_trains_fp32_weights_and_optimizer_state_and_differs_from_fp32(teacher_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    blocks = pack(corpus(), tokenizer, 32, 16)
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        student = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"], dtype=torch.float32)
        with computing_in(precision):
            result = train(student, Budget(steps=6, batch_size=4, lr=3e-3), lm_loss(student, blocks, CPU), np.full(16, 32))
        assert all(p.dtype == torch.float32 for p in student.parameters())
        assert all(np.isfinite(result.losses))
        runs[precision] = result.losses
    assert runs["fp32"] != runs["bf16"]
    assert np.allclose(runs["fp32"], runs["bf16"], rtol=0.05)  # the same run, to bf16's rounding


def test_teachers_load_in_the_precisions_dtype_whatever_their_checkpoint(tmp_path, teacher_dirs):
    """transformers 5 loads a checkpoint in its own dtype by default: a teacher saved in
    bfloat16 would run in bfloat16 in an fp32 study without the explicit dtype."""
    from transformers import AutoModelForCausalLM

    saved = tmp_path / "bf16-teacher"
    AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"]).to(torch.bfloat16).save_pretrained(saved)
    source = teacher_source(TeacherConfig(model=str(saved)), tmp_path)
    assert {p.dtype for p in source.load_model("AutoModelForCausalLM").parameters()} == {torch.float32}
    with computing_in("fp32"):
        assert {p.dtype for p in source.load("AutoModelForCausalLM")[0].parameters()} == {torch.float32}
    with computing_in("bf16"):
        assert {p.dtype for p in source.load("AutoModelForCausalLM")[0].parameters()} == {torch.bfloat16}


def test_each_precision_has_its_own_cache_of_teacher_outputs(tmp_path, teacher_dirs):
    write_spec(tmp_path, teacher_dirs["qwen2"])
    data = DataConfig(source="json", files=("docs.jsonl",), text_column="body", block_length=32, train_blocks=8, eval_blocks=4)
    loss = LossConfig({"forward_kl": 1.0}, {"temperature": 1.0, "top_k": 8})
    made = {
        p: prepare(get_task("causal-lm"), TeacherConfig(model=str(teacher_dirs["qwen2"])), data, loss,
                   base_dir=tmp_path, cache_root=tmp_path / "cache", precision=p)
        for p in ("fp32", "bf16")
    }  # fmt: skip
    assert made["fp32"].path != made["bf16"].path
    assert made["fp32"].precision == "fp32" and made["bf16"].precision == "bf16"
    fp32, bf16 = (made[p].array("train_teacher_logprobs") for p in ("fp32", "bf16"))
    assert fp32.dtype == bf16.dtype  # stored alike either way
    assert not np.array_equal(fp32, bf16) and np.allclose(fp32, bf16, atol=0.1)
    assert made["bf16"].teacher_metrics["perplexity"] == pytest.approx(made["fp32"].teacher_metrics["perplexity"], rel=0.02)


def test_a_large_vocabulary_logits_are_taken_a_slice_of_positions_at_a_time(monkeypatch, tmp_path, teacher_dirs):
    """At a 151,936-token vocabulary one 128-token row's logits take 74 MiB in fp32: the
    teacher's output head runs on a slice of positions at a time (`HEAD_BUDGET`), never on
    the whole batch, and what is kept of its logits equals what the whole logits give. A
    model whose head cannot be split off runs as many rows as fit `LOGITS_BUDGET` instead,
    with the same outputs."""
    from distill.tasks import text
    from distill.tasks.base import Batch

    task = get_task("causal-lm")
    teacher = task.load_teacher(teacher_source(TeacherConfig(model=str(teacher_dirs["llama"])), tmp_path))
    vocab = teacher.model.config.vocab_size
    ids = torch.randint(0, vocab, (5, 16))
    groups, params = {"topk", "confidence", "hidden_states"}, {"temperature": 2.0, "top_k": 8}
    assert text.split_head(teacher.model) is not None
    monkeypatch.setattr(text, "split_head", lambda model: None)
    whole = task.teacher_outputs(teacher, Batch({"input_ids": ids}), groups, params)  # the model's own logits
    monkeypatch.undo()

    head = teacher.model.get_output_embeddings()
    seen = []
    handle = head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1]))
    monkeypatch.setattr(text, "HEAD_BUDGET", 16 * vocab * 7)  # 7 positions at a time
    sliced = task.teacher_outputs(teacher, Batch({"input_ids": ids}), groups, params)
    handle.remove()
    assert seen == [(7,)] * 10 + [(5,)]  # 5 rows x 15 positions, never the (5, 15, V) logits
    assert sliced.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(sliced[name], whole[name], rtol=1e-4, atol=1e-4)

    calls = []
    forward = teacher.model.forward
    monkeypatch.setattr(text, "split_head", lambda model: None)
    monkeypatch.setattr(teacher.model, "forward", lambda *a, **k: calls.append(k["input_ids"].shape[0]) or forward(*a, **k))
    monkeypatch.setattr(text, "LOGITS_BUDGET", 2 * 3 * 4 * 16 * vocab)  # two rows
    rows = task.teacher_outputs(teacher, Batch({"input_ids": ids}), groups, params)
    assert calls == [2, 2, 1]
    for name in whole:
        torch.testing.assert_close(rows[name], whole[name], rtol=1e-5, atol=1e-5)


def test_a_head_is_split_off_only_where_the_logits_are_the_head_of_the_last_hidden_state():
    """GPT-2 and Llama give their head's output as their logits; Gemma 2 soft-caps it, so its
    logits are taken whole."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill.tasks.text import split_head

    small = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}  # fmt: skip
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    llama = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **small))
    gemma2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma2", **small, final_logit_softcapping=0.5))
    assert split_head(gpt2) == (gpt2.transformer, gpt2.lm_head)
    assert split_head(llama) == (llama.model, llama.lm_head)
    assert split_head(gemma2) is None
