"""End to end for the embedding task: a real tiny search through Ray Tune + Optuna with a
sentence-transformers-style BERT teacher, students initialized from it or at random."""

import json

import pytest
from optuna.trial import TrialState

from distill import PreparedData
from distill.tasks.embedding import read_pooling
from nas.pareto import front_json, front_table
from nas.report import write_report
from nas.search import run_search
from nas.spec import SpecError, load_spec
from nas.study import distilled_records, distinct_complete, front_trials
from tests.conftest import write_embedding_spec

pytestmark = pytest.mark.usefixtures("ray_local")


def test_embedding_search_end_to_end(tmp_path, sentence_teacher):
    assert read_pooling(sentence_teacher) == {"mode": "mean", "normalize": True}
    spec = load_spec(write_embedding_spec(tmp_path, sentence_teacher))
    study = run_search(spec)
    complete = distinct_complete(study)
    assert len(complete) == 3 and not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))
    for t in complete:
        for key in (
            "cosine",
            "spearman",
            "retrieval",
            "params",
            "non_embedding_params",
            "latency_ms",
            "latency_ms_b32",
            "peak_memory_mb",
        ):
            assert key in t.user_attrs, key
        assert -1.0 <= t.user_attrs["cosine"] <= 1.0 and 0.0 <= t.user_attrs["retrieval"] <= 1.0
        assert t.values == [t.user_attrs[k] for k in ("cosine", "spearman", "non_embedding_params", "latency_ms_b32")]
        assert t.user_attrs["arch"]["family"] == "bert"
    teacher = study.user_attrs["teacher_metrics"]
    # the teacher scored against its own cached embeddings: in bf16 (where the CPU computes it)
    # batches of other sizes round alike only to about 1e-5, which moves the ranks of nearly
    # equal pairwise similarities (Spearman 0.99994 here)
    assert teacher["cosine"] == pytest.approx(1.0, abs=1e-5) and teacher["spearman"] == pytest.approx(1.0, abs=1e-3)
    # teacher outputs computed once: embeddings, every layer's hidden states and Q/K/V for the asked losses
    data = PreparedData(next((spec.out_dir / "cache").iterdir()))
    for name in ("embedding", "encoder_hidden", "query", "key", "value"):
        assert (data.path / f"train_teacher_{name}.npy").exists(), name
    assert (data.path / "eval_teacher_embedding.npy").exists() and not (data.path / "eval_teacher_encoder_hidden.npy").exists()
    assert data.array("train_teacher_encoder_hidden").shape == (64, 5, 48, 64)  # every layer's states, embeddings first
    assert front_trials(study) and "cosine ↑" in front_table(study)
    assert json.loads(front_json(study))["front"]
    assert "Pareto front" in write_report(study, spec.out_dir / "report.html").read_text()


def test_embedding_specs_check_their_metrics(tmp_path, sentence_teacher):
    path = write_embedding_spec(tmp_path, sentence_teacher, name="badmetric")
    with pytest.raises(SpecError, match="'perplexity' is not a metric of task embedding; allowed: cosine"):
        load_spec(path, ["objectives.quality=['perplexity']"])
    with pytest.raises(SpecError, match=r"space\.init: unknown choice 'pretrained'"):
        load_spec(path, ["space.init=['pretrained']"])


def test_full_distillation_exports_a_sentence_transformer(tmp_path, sentence_teacher):
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    from distill.data import load_documents, paragraphs
    from nas.full import export_dir

    path = write_embedding_spec(tmp_path, sentence_teacher, name="fullemb")
    spec = load_spec(path)
    run_search(spec, trials=2)
    args = ["--best", "cosine", "full.steps=40", "full.batch_size=8", "full.eval_every=10", "full.checkpoint_every=10"]
    proc = subprocess.run(
        [sys.executable, "-m", "nas", "distill", str(path), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = run_search(spec, trials=2)  # nothing more to run: loads the study
    number, record = next(iter(distilled_records(study).items()))
    out = export_dir(spec, int(number))
    assert (out / "modules.json").exists() and (out / "README.md").exists()
    # sentences never trained on, encoded by sentence-transformers alone
    texts = paragraphs(load_documents(spec.data, spec.base_dir, spec.study.seed)["eval"])[: spec.data.eval_blocks]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    code = (
        "import json, sys, numpy as np; from sentence_transformers import SentenceTransformer\n"
        "m = SentenceTransformer(sys.argv[1], device='cpu')\n"
        "e = m.encode(json.load(open(sys.argv[2])), convert_to_numpy=True)\n"
        "assert 'nas' not in sys.modules and 'distill' not in sys.modules\n"
        "np.save(sys.argv[3], e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(out), str(tmp_path / "texts.json"), str(tmp_path / "e.npy")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    student = np.load(tmp_path / "e.npy")
    teacher = np.load(next(Path(spec.out_dir / "cache").iterdir()) / "eval_teacher_embedding.npy")
    assert student.shape == teacher.shape
    cos = (student * teacher).sum(1) / (np.linalg.norm(student, axis=1) * np.linalg.norm(teacher, axis=1))
    assert cos.mean() == pytest.approx(record["metrics"]["cosine"], abs=2e-3)
    assert f"{record['metrics']['cosine']:.4f}" in (out / "README.md").read_text()


def test_a_search_on_a_mixture_of_sources_reports_what_each_gave(tmp_path, sentence_teacher):
    """Two sources by weight (the study's paragraphs and Python's documentation topics), half
    of the paragraphs embedded as their sentences: the search runs on the mixture, and the
    study, its report and `nas pareto --json` say what each part gave."""
    path = write_embedding_spec(tmp_path, sentence_teacher, name="mixemb")
    mix = (
        'sentences = 0.5\n[[data.mix]]\nsource = "json"\nfiles = ["docs.jsonl"]\ntext_column = "body"\nweight = 1\n'
        '[[data.mix]]\nsource = "pydoc-topics"\nweight = 2\n'
    )
    text = path.read_text().replace('source = "json"\nfiles = ["docs.jsonl"]\ntext_column = "body"\n', "")
    path.write_text(text.replace("eval_blocks = 24\n", "eval_blocks = 24\n" + mix))
    spec = load_spec(path)
    assert [p.weight for p in spec.data.mix] == [1.0, 2.0] and spec.evals == ()
    study = run_search(spec, trials=2)
    assert len(distinct_complete(study)) == 2
    info = study.user_attrs["data_info"]
    parts = ["mix 0: json (docs.jsonl), weight 0.333", "mix 1: pydoc-topics, weight 0.667"]
    assert list(info) == parts and all(info[p]["train"] > 0 and info[p]["eval"] > 0 for p in parts)
    assert parts[1] in write_report(study, spec.out_dir / "report.html").read_text()
    data = PreparedData(next((spec.out_dir / "cache").iterdir()))
    lengths = data.array("train_mask").sum(1)
    assert lengths.min() < 20 <= lengths.max()  # sentences beside whole paragraphs
