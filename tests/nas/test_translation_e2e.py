"""End to end for the translation task: a real tiny search through Ray Tune + Optuna with a
Marian teacher built from a config, on the gettext catalogs pycountry ships; the word- and
sequence-level KD mix; sacrebleu's command line on the saved translations; `nas distill` of
the best trial and its export translating in a process of its own."""

import json
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from nas.full import export_dir
from nas.report import write_report
from nas.search import run_search
from nas.spec import load_spec
from nas.study import distilled_records, distinct_complete
from tests.conftest import write_translation_spec

pytestmark = pytest.mark.usefixtures("ray_local")

# word-level KD on the reference, sequence-level KD on the teacher's beam search, and CE
MIX = """sequence_kd = 1.0
forward_kl = 1.0
ce = 0.5
sequence_beams = 2

[[eval]]
name = "cities"
source = "json"
package = ""
files = ["cities.jsonl"]
"""
CITIES = [("Vienna", "Wien"), ("Munich", "München"), ("Cologne", "Köln"), ("Berlin", "Berlin"), ("Zurich", "Zürich")]
FULL = ["full.steps=30", "full.batch_size=8", "full.eval_every=10", "full.lr=3e-3"]


def sacrebleu_cli(references, hypotheses) -> list[float]:
    """BLEU and chrF as sacrebleu's own command line prints them (6 decimals)."""
    out = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(references), "-i", str(hypotheses), "-m", "bleu", "chrf", "-b", "-w", "6", "-f", "text"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [float(v) for v in out]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, translation_teacher):
    folder = tmp_path_factory.mktemp("mt")
    rows = [json.dumps({"translation": {"en": en, "de": de}}) for en, de in CITIES]
    (folder / "cities.jsonl").write_text("\n".join(rows) + "\n")
    path = write_translation_spec(folder, translation_teacher, extra=MIX)
    spec = load_spec(path)
    return path, spec, run_search(spec)


def test_translation_search_end_to_end(searched, tmp_path):
    path, spec, study = searched
    complete = distinct_complete(study)
    assert len(complete) == 3 and not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))
    for t in complete:
        assert {"bleu", "chrf", "kl", "params", "latency_ms", "sentences_per_s"} <= set(t.user_attrs)
        assert 0.0 <= t.user_attrs["chrf"] <= 100.0 and t.values == [t.user_attrs["chrf"], t.user_attrs["params"]]
        assert t.user_attrs["arch"]["family"] in ("marian", "t5")
    # the teacher's beam-search translations of the training sources were made once, in the study's cache
    metas = [json.loads((c / "meta.json").read_text()) for c in (spec.out_dir / "cache").iterdir()]
    (meta,) = [m for m in metas if "train" in m["outputs"]]  # the other is the extra evaluation set's
    assert {"teacher_sequence", "teacher_logprobs"} <= set(meta["outputs"]["train"])
    # what reading the catalogs found and how the scores were computed, kept with the study
    pairs = study.user_attrs["data_info"]["pairs"]
    assert pairs["kept"] > 3000 and pairs["untranslated"] > 1000 and pairs["read"] > pairs["kept"]
    assert set(study.user_attrs["scoring"]) == {"bleu", "chrf"}
    assert study.user_attrs["scoring"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6")
    assert study.user_attrs["eval_sets_info"]["cities"]["pairs"] == {
        "read": 5, "kept": 4, "empty": 0, "untranslated": 1, "fuzzy": 0, "repeated source": 0,
    }  # fmt: skip
    html = write_report(study, tmp_path / "report.html").read_text()
    assert "scoring: bleu nrefs:1|" in html and "untranslated" in html and "eval set cities, pairs: 5 read, 4 kept" in html
    # each trial's translations are saved beside the references: sacrebleu's command line gives the stored scores
    texts = spec.out_dir / "texts"
    references = (texts / "references.eval.txt").read_text().splitlines()
    assert len(references) == 16 and len((texts / "sources.eval.txt").read_text().splitlines()) == 16
    for t in complete:
        hypotheses = texts / f"trial-{t.number}.eval.txt"
        assert len(hypotheses.read_text().splitlines()) == 16
        assert sacrebleu_cli(texts / "references.eval.txt", hypotheses) == pytest.approx(
            [t.user_attrs["bleu"], t.user_attrs["chrf"]], abs=1e-4
        )
        on_cities = sacrebleu_cli(texts / "references.cities.txt", texts / f"trial-{t.number}.cities.txt")
        assert on_cities == pytest.approx([t.user_attrs["eval_sets"]["cities"][m] for m in ("bleu", "chrf")], abs=1e-4)
    assert sorted((texts / "sources.cities.txt").read_text().splitlines()) == ["Cologne", "Munich", "Vienna", "Zurich"]
    teacher = sacrebleu_cli(texts / "references.eval.txt", texts / "teacher.eval.txt")
    assert teacher == pytest.approx([study.user_attrs["teacher_metrics"][m] for m in ("bleu", "chrf")], abs=1e-4)


def test_the_best_trial_distilled_ships_a_translator_that_scores_as_its_card_says(searched, tmp_path):
    path, spec, _ = searched
    caches = sorted((spec.out_dir / "cache").iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "nas", "distill", str(path), "--best", "chrf", *FULL],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    ((number, record),) = distilled_records(study).items()
    folder = export_dir(spec, int(number))
    assert sorted((spec.out_dir / "cache").iterdir()) == caches  # the study's teacher outputs, reused
    card = (folder / "README.md").read_text()
    for needed in ("BLEU against the references", "chrF against the references", "generation latency, ms/sentence",
                   "scoring: bleu nrefs:1|case:mixed|eff:no|tok:13a", "sequence-level KD", "pipeline_tag: translation",
                   "sacrebleu texts/references.eval.txt -i texts/student.eval.txt -m bleu chrf"):  # fmt: skip
        assert needed in card, needed
    chrf_row = next(line for line in card.splitlines() if line.startswith("| chrF against"))
    assert chrf_row.count("|") == 5  # student, student after the brief run, teacher
    # In a process of its own, with transformers alone: translate the held-out sources as the card's
    # usage does (the saved generation config), in the precision the card names, and score them
    # with sacrebleu.
    assert f"- Precision: {record['precision']}" in card
    code = """
import sys
from pathlib import Path
import torch
from sacrebleu.metrics import CHRF
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
folder = Path(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
sources = (folder / "texts" / "sources.eval.txt").read_text().splitlines()
references = (folder / "texts" / "references.eval.txt").read_text().splitlines()
batch = tokenizer(sources, return_tensors="pt", padding=True)
with torch.autocast("cpu", dtype=torch.bfloat16, enabled=sys.argv[2] == "bf16"):
    out = model.generate(**batch)
hypotheses = [" ".join(h.split()) for h in tokenizer.batch_decode(out, skip_special_tokens=True)]
assert "nas" not in sys.modules and "distill" not in sys.modules
print(repr(CHRF().corpus_score(hypotheses, [references]).score))
"""
    run = subprocess.run(
        [sys.executable, "-c", code, str(folder), record["precision"]], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(run.stdout.strip()) == pytest.approx(record["metrics"]["chrf"], abs=1e-6)
    assert f"| {record['metrics']['chrf']:.2f} |" in chrf_row
    assert sacrebleu_cli(folder / "texts" / "references.eval.txt", folder / "texts" / "student.eval.txt") == (
        pytest.approx([record["metrics"]["bleu"], record["metrics"]["chrf"]], abs=1e-4)
    )
