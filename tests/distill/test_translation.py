"""Translation specifics beyond the task contract: padding, sacrebleu's own command line, and
teachers of the wrong kind."""

import subprocess
import sys

import pytest
import torch

from distill.errors import InputError
from distill.tasks import TASKS
from distill.tasks.base import Batch
from distill.tasks.translation import encode_side, score, train_pair_tokenizer
from distill.teachers import TeacherSource
from search_spaces import Seq2SeqArch, build_seq2seq

PAIRS = [
    ("Germany", "Deutschland"),
    ("the Republic of Austria", "die Republik Österreich"),
    ("Swiss franc", "Schweizer Franken"),
    ("Upper Sorbian", "Obersorbisch"),
]


def _batch(tokenizer, pad_to):
    src, src_mask = encode_side(tokenizer, [s for s, _ in PAIRS], pad_to, target=False)
    tgt, tgt_mask = encode_side(tokenizer, [t for _, t in PAIRS], pad_to, target=True)
    as_long = {k: torch.from_numpy(v.astype("int64")) for k, v in dict(src=src, sm=src_mask, tgt=tgt, tm=tgt_mask).items()}
    inputs = {"input_ids": as_long["src"], "attention_mask": as_long["sm"], "labels": as_long["tgt"]}
    return Batch({**inputs, "decoder_attention_mask": as_long["tm"]}, {"tokens": pad_to})


def test_the_pair_tokenizer_ends_every_sentence_with_eos_and_padding_changes_no_loss():
    from distill.losses import next_token_ce, topk_kd_loss

    tokenizer = train_pair_tokenizer(PAIRS * 10, 300)
    assert all(ids[-1] == tokenizer.eos_token_id for ids in tokenizer([s for s, _ in PAIRS])["input_ids"])
    config = build_seq2seq(Seq2SeqArch("marian", 1, 1, 2, 8, 2.0, True), _vocab(tokenizer), 40).config
    torch.manual_seed(0)
    student = build_seq2seq(Seq2SeqArch("marian", 2, 1, 2, 8, 2.0, True), config, 40).eval()
    teacher = build_seq2seq(Seq2SeqArch("t5", 2, 1, 2, 8, 2.0, True), config, 40).eval()
    task, losses = TASKS["translation"], []
    for pad_to in (24, 40):  # the same pairs, with 16 more padding positions on each side
        batch = _batch(tokenizer, pad_to)
        assert batch.inputs["attention_mask"].sum(1).max() < 24 and batch.inputs["decoder_attention_mask"].sum(1).max() < 24
        with torch.no_grad():
            out = task.forward(student, batch, {"student_logits", "labels", "mask"}, {})
            top = task.teacher_outputs(_Teacher(teacher), batch, {"topk"}, {"temperature": 1.0, "top_k": 8})
        kd = topk_kd_loss(out["student_logits"], top["teacher_logprobs"], top["teacher_indices"], 1.0, out["mask"])
        losses.append((next_token_ce(out["student_logits"], out["labels"]).item(), kd.item()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


class _Teacher:
    def __init__(self, model):
        self.model = model


def _vocab(tokenizer):
    from types import SimpleNamespace

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    return SimpleNamespace(
        model_type="tokenizer", vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=eos,
        pad_token_id=pad, decoder_start_token_id=pad,
    )


def test_scores_equal_sacrebleus_command_line(tmp_path):
    hypotheses = ["Deutschland", "die Republik Osterreich", "Schweizer Frank", "Sorbisch"]
    references = [t for _, t in PAIRS]
    (tmp_path / "hyp.txt").write_text("\n".join(hypotheses) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(references) + "\n")
    cli = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"), "-m", "bleu", "chrf", "-b", "-f", "text"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    ours = score(hypotheses, references)
    assert [float(v) for v in cli] == [round(ours["bleu"], 1), round(ours["chrf"], 1)]
    assert ours["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_teachers_of_the_wrong_kind_are_refused_in_one_line(teacher_dirs, translation_teacher):
    causal = TeacherSource(str(teacher_dirs["gpt2"]), None, False, "tiny-gpt2")
    with pytest.raises(InputError, match=r"^teacher\.model: translation students .* 'gpt2' model$"):
        TASKS["translation"].load_teacher(causal)
    seq2seq = TeacherSource(str(translation_teacher), None, False, "tiny-marian")
    with pytest.raises(InputError, match=r"^teacher\.model: causal-LM students .* encoder-decoder 'marian' model"):
        TASKS["causal-lm"].load_teacher(seq2seq)


def test_the_scoring_decoding_works_for_a_t5_config_without_bos():
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from distill.tasks.translation import decoding

    config = AutoConfig.for_model(
        "t5", vocab_size=97, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    assert getattr(config, "bos_token_id", None) is None
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    settings = decoding(model.generation_config, 2, 6)
    out = model.generate(input_ids=torch.randint(2, 97, (2, 5)), generation_config=settings)
    assert settings.num_beams == 2 and out.shape[1] <= 7  # the start token and at most 6 new ones


def test_a_model_the_auto_class_does_not_know_is_one_line(teacher_dirs):
    causal = TeacherSource(str(teacher_dirs["gpt2"]), None, False, "tiny-gpt2")
    with pytest.raises(InputError, match=r"^teacher\.model: cannot load 'tiny-gpt2': "):
        causal.load("AutoModelForSeq2SeqLM")


def test_a_teacher_trained_here_learns_its_pairs_and_its_translations_are_the_sequence_kd_targets(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    from distill.tasks.translation import train_teacher, translations
    from distill.teachers import TeacherTraining

    cfg = TeacherTraining(vocab_size=300, layers=1, hidden=32, heads=2, steps=300, batch_size=4, lr=3e-3)
    train_teacher(cfg, PAIRS * 4, tmp_path / "teacher", 16)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "teacher").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "teacher")
    assert GenerationConfig.from_pretrained(tmp_path / "teacher").max_new_tokens == 16
    batch = _batch(tokenizer, 16)
    batch.lengths["max_tokens"] = 16
    out = translations(model, batch, beams=3)
    seq, mask = out["teacher_sequence"].long(), out["teacher_sequence_mask"].long()
    # it has learnt its four pairs: its translations are the references, each ending at its first EOS
    n = seq.shape[1]
    ref, ref_mask = batch.inputs["labels"][:, :n], batch.inputs["decoder_attention_mask"][:, :n]
    assert torch.equal(mask.sum(1), batch.inputs["decoder_attention_mask"].sum(1))
    assert torch.equal(seq * ref_mask, ref * ref_mask)
    assert all(seq[i, n - 1] == tokenizer.eos_token_id for i, n in enumerate(mask.sum(1).tolist()))
    beams = model.generate(input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"], num_beams=3)
    assert torch.equal(seq * mask, beams[:, 1:][:, : seq.shape[1]] * mask)  # the beam search, without the start token
    batch.lengths["max_tokens"] = 4  # the study's sentence length bounds what is kept
    cut = translations(model, batch, beams=3)
    assert cut["teacher_sequence"].shape[1] <= 4 and int(cut["teacher_sequence_mask"].sum(1).max()) <= 4
