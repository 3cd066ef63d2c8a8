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
    assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in tokenizer([t for _, t in PAIRS])["input_ids"]] == [
        t for _, t in PAIRS
    ]  # decoded as written: no space before the first word
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
        self.model, self.student_tokenizer = model, None


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


def _tiny(family, **kw):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    ids = {"vocab_size": 97, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 2}
    shapes = {
        "marian": dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                       encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32),
        "mbart": dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                      encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32),
        "t5": dict(d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1, num_decoder_layers=1),
    }  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(family, **ids, **shapes[family], **kw)).eval()


@pytest.mark.parametrize("family", ["marian", "t5", "mbart"])
def test_teacher_forcing_is_the_models_own(family):
    from distill.tasks.translation import _forced_logits, decoder_inputs

    model = _tiny(family)
    labels = torch.tensor([[5, 6, 7, 1, 50], [8, 1, 50, 0, 0]])  # mBART's layout: tokens, EOS, language code
    mask = (labels != 0).long()
    shifted = decoder_inputs(model, labels)
    if family == "mbart":  # the language code wrapped to the front, not a fixed start token
        assert shifted[:, 0].tolist() == [50, 50]
    else:
        assert shifted[:, 0].tolist() == [model.config.decoder_start_token_id] * 2
    assert torch.equal(shifted[:, 1:], labels[:, :-1])
    src = torch.tensor([[9, 10, 1], [11, 1, 0]])
    batch = Batch({"input_ids": src, "attention_mask": (src != 0).long(), "labels": labels, "decoder_attention_mask": mask})
    with torch.no_grad():  # what the cache holds is what the model computes from its own labels
        own = model(input_ids=src, attention_mask=(src != 0).long(), labels=labels, decoder_attention_mask=mask).logits
        torch.testing.assert_close(_forced_logits(model, batch), own)


def test_eos_is_added_only_where_the_tokenizer_put_none():
    tokenizer = train_pair_tokenizer(PAIRS * 10, 300)
    ids, mask = encode_side(tokenizer, ["Germany"], 8, target=False)
    n = int(mask.sum())
    assert ids[0, n - 1] == tokenizer.eos_token_id and list(ids[0, :n]).count(tokenizer.eos_token_id) == 1
    tokenizer._tokenizer.post_processor = None  # now it ends sentences with nothing ...
    assert tokenizer.eos_token_id not in tokenizer("Germany")["input_ids"]
    bare, bare_mask = encode_side(tokenizer, ["Germany"], 8, target=False)
    assert bare[0, int(bare_mask.sum()) - 1] == tokenizer.eos_token_id
    assert encode_side(tokenizer, ["Germany " * 20], 8, target=False)[0][0, -1] == tokenizer.eos_token_id  # cut, then ended


def test_a_source_prefix_and_a_multilingual_tokenizers_language_codes(tmp_path):
    from distill.tasks.base import Teacher
    from distill.tasks.pairs import PairDataConfig
    from distill.tasks.translation import set_languages

    tokenizer = train_pair_tokenizer(PAIRS * 10, 300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["en_XX", "de_DE"]})
    model = build_seq2seq(Seq2SeqArch("marian", 1, 1, 2, 8, 2.0, True), _vocab(tokenizer), 40).eval()
    teacher = Teacher(model, tokenizer, TeacherSource(str(tmp_path), None, True, "tiny"))
    data = PairDataConfig(package="pycountry", source_prefix=">>de<< ", lang_codes=["en_XX", "de_DE"], max_length=16)
    encoded = TASKS["translation"].encode(PAIRS, teacher, data, "eval")
    assert encoded["sources"][0] == ">>de<< Germany"
    assert list(encoded["src_ids"][0][:3]) == tokenizer(">>de<< Germany")["input_ids"][:3]
    # the tokenizer knows the pair, and generation starts with the target language's token
    target = tokenizer.convert_tokens_to_ids("de_DE")
    assert (tokenizer.src_lang, tokenizer.tgt_lang) == ("en_XX", "de_DE")
    assert model.generation_config.forced_bos_token_id == target
    out = model.generate(input_ids=torch.tensor(encoded["src_ids"][:2]).long(), max_new_tokens=3)
    assert out[:, 1].tolist() == [target, target]
    bad = PairDataConfig(package="pycountry", lang_codes=["en_XX", "xx_YY"])
    with pytest.raises(InputError, match=r"^data\.lang_codes: 'xx_YY' is not a language code of the teacher's tokenizer$"):
        set_languages(teacher, bad)


def test_bleu_tokenizes_as_sacrebleu_does_for_the_target_language(tmp_path):
    from distill.tasks.pairs import PairDataConfig

    task = TASKS["translation"]
    # the card's command names the language as BLEU chose its tokenizer by it
    assert task.rescore("r.txt", "h.txt", {"pair": ["en", "zh_CN"]}) == "sacrebleu r.txt -i h.txt -m bleu chrf -l en-zh"
    assert "tok:13a" in task.scoring(PairDataConfig(package="pycountry"))["bleu"]
    assert "tok:zh" in task.scoring(PairDataConfig(package="pycountry", pair=("en", "zh_CN")))["bleu"]
    hypotheses, references = ["我喜欢猫，也喜欢狗。", "今天天气很好"], ["我喜欢狗，也喜欢猫。", "今天天气不错"]
    (tmp_path / "hyp.txt").write_text("\n".join(hypotheses) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(references) + "\n")
    cli = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"), "-l", "en-zh",
         "-m", "bleu", "-b", "-w", "6", "-f", "text"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ours = score(hypotheses, references, "zh_CN")["bleu"]
    assert float(cli) == pytest.approx(ours, abs=1e-5) and ours != pytest.approx(score(hypotheses, references)["bleu"])
    try:
        import MeCab  # noqa: F401
    except ImportError:  # Japanese needs sacrebleu's extra: one line that says so, before anything runs
        with pytest.raises(InputError, match=r"^data\.pair: BLEU into 'ja' needs the tokenizer that sacrebleu installs"):
            task.scoring(PairDataConfig(package="pycountry", pair=("en", "ja")))
