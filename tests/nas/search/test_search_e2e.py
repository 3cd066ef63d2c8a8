"""End to end: real tiny searches through Ray Tune + Optuna on CPU, resumed, shown and reported."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.pareto import front_json, front_table
from nas.report import write_report
from nas.search import MAX_ROUNDS, run_search
from nas.spec import load_spec
from nas.study import INTERRUPTED, distinct_complete, distinct_evaluated, front_trials
from tests.conftest import write_spec

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, teacher_dirs):
    """A 3-trial search on a tiny GPT-2 teacher."""
    folder = tmp_path_factory.mktemp("study")
    spec = load_spec(write_spec(folder, teacher_dirs["gpt2"]))
    study = run_search(spec)
    return spec, study


def test_search_records_every_trial(searched):
    spec, study = searched
    complete = distinct_complete(study)
    assert len(complete) == 3
    assert not study.get_trials(states=(TrialState.RUNNING,))
    teacher_ppl = study.user_attrs["teacher_metrics"]["perplexity"]
    assert teacher_ppl > 1
    for t in complete:
        arch = t.user_attrs["arch"]
        assert json.loads(json.dumps(arch)) == arch
        for key in (
            "perplexity",
            "kl",
            "top1_agreement",
            "params",
            "non_embedding_params",
            "latency_ms",
            "peak_memory_mb",
        ):
            assert t.user_attrs[key] > 0 or key == "top1_agreement", key
        assert t.values == [t.user_attrs["perplexity"], t.user_attrs["params"]]
        assert len(t.user_attrs["loss_curve"]) == spec.brief.steps
    # the teacher cache is computed once per study and reused by every trial
    caches = list((spec.out_dir / "cache").iterdir())
    assert len(caches) == 1 and (caches[0] / "train_teacher_logprobs.npy").exists()


def test_front_table_json_and_report(searched):
    spec, study = searched
    front = front_trials(study)
    assert 1 <= len(front) <= 3
    table = front_table(study)
    assert "Pareto front of tiny" in table and "perplexity ↓" in table and "teacher" in table
    for t in front:
        assert t.user_attrs["arch_short"] in table
    data = json.loads(front_json(study))
    assert {r["trial"] for r in data["front"]} == {t.number for t in front}
    out = write_report(study, spec.out_dir / "report.html")
    html = out.read_text()
    assert "plotly" in html and "Pareto front of tiny" in html and "Hypervolume" in html
    assert len(html) > 1_000_000  # plotly.js is inlined: one self-contained file


def test_optuna_cli_reads_the_study(searched):
    spec, _ = searched
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "optuna"),
            "trials",
            "--study-name",
            spec.name,
            "--storage",
            spec.storage_url,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert sum(r["state"] == "COMPLETE" for r in rows) >= 3


def test_resume_keeps_trials_and_fails_stale_ones(searched):
    spec, study = searched
    before = {t.number: t.values for t in distinct_complete(study)}
    stale = study.ask()  # a trial left RUNNING by a killed run
    study = run_search(spec, trials=4)
    assert study.trials[stale.number].state == TrialState.FAIL
    assert study.trials[stale.number].user_attrs["fail_reason"] == INTERRUPTED
    after = {t.number: t.values for t in distinct_complete(study)}
    assert all(after[n] == v for n, v in before.items())
    assert len(distinct_evaluated(study)) == 4  # the fourth architecture ran (to the end or to a rung)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # a finished study runs nothing more
    assert len(run_search(spec, trials=4).trials) == len(study.trials)


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path, teacher_dirs):
    spec = load_spec(write_spec(tmp_path, teacher_dirs["gpt2"], name="diverge"), ["brief.lr=1e30", "study.trials=2"])
    study = run_search(spec)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2 and not distinct_complete(study)
    assert all("loss is nan" in t.user_attrs["fail_reason"].lower() for t in failed), [t.user_attrs for t in failed]
    assert not study.get_trials(states=(TrialState.RUNNING,))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_llama_family_teachers_work_the_same_way(tmp_path, teacher_dirs, family):
    spec = load_spec(write_spec(tmp_path, teacher_dirs[family], name=family), ["study.trials=2"])
    study = run_search(spec)
    assert len(distinct_complete(study)) == 2
    assert front_trials(study)


def test_repeated_architectures_are_not_trained_again(tmp_path, teacher_dirs):
    spec = load_spec(
        write_spec(tmp_path, teacher_dirs["gpt2"], name="tinyspace"),
        [
            "space.families=['gpt2']",
            "space.layers=[1, 1]",
            "space.heads=[2]",
            "space.head_dim=[8]",
            "space.tie_embeddings=[true]",
            "study.trials=1",
        ],
    )
    study = run_search(spec)
    assert len(distinct_complete(study)) == 1
    # the space holds one architecture: asking for more repeats it without training, a round
    # of repeats is followed by another, and MAX_ROUNDS of them in a row end the search short
    study = run_search(spec, trials=2)
    repeats = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(repeats) == MAX_ROUNDS
    assert repeats and all(t.user_attrs["duplicate_of"] == distinct_complete(study)[0].number for t in repeats)
    assert all("train_seconds" in t.user_attrs for t in repeats)
    assert len(distinct_complete(study)) == 1
    assert optuna.load_study(study_name=spec.name, storage=spec.storage_url).trials


def test_decoder_students_sliced_from_the_teacher(tmp_path, teacher_dirs):
    from distill.errors import InputError

    overrides = ["space.families=['llama']", "space.head_dim=[8]", "space.heads=[2, 4]", "space.init=['teacher']"]
    overrides += ["space.layer_pick=['even', 'first', 'every_other']", "study.trials=2"]
    spec = load_spec(write_spec(tmp_path, teacher_dirs["llama"], name="sliced"), overrides)
    study = run_search(spec)
    done = distinct_complete(study)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(done) == 2, [t.user_attrs.get("fail_reason") for t in failed]
    assert all(t.user_attrs["arch"]["init"] == "teacher" and "init=teacher" in t.user_attrs["arch_short"] for t in done)
    wrong = load_spec(
        write_spec(tmp_path, teacher_dirs["llama"], name="wrongfamily"),
        [*overrides[:1], "space.families=['gpt2']", *overrides[1:]],
    )
    with pytest.raises(
        InputError,
        match=r"space\.init: students initialized from the teacher need families = \['llama'\] and head_dim = \[8\]",
    ):
        run_search(wrong)


def _two_teachers(path: Path, second: Path) -> Path:
    """The spec at `path` with a second `[[teacher]]` table."""
    text = path.read_text()
    start = text.index("[teacher]")
    end = text.index("\n[", start + 1)
    first = text[start:end].replace("[teacher]", "[[teacher]]")
    path.write_text(text[:start] + first + f'\n[[teacher]]\nmodel = "{second}"\n' + text[end:])
    return path


def test_a_search_learns_from_two_teachers_sharing_the_tokenizer(tmp_path, teacher_dirs):
    path = _two_teachers(write_spec(tmp_path, teacher_dirs["gpt2"], name="two"), teacher_dirs["llama"])
    spec = load_spec(path, ["study.trials=2", "loss.combine='lowest_entropy'"])
    study = run_search(spec)
    assert len(distinct_complete(study)) == 2 and not study.get_trials(states=(TrialState.FAIL,))
    assert " + " in study.user_attrs["teacher"] and len(study.user_attrs["other_teacher_metrics"]) == 1
    caches = sorted((spec.out_dir / "cache").iterdir())  # each teacher's outputs, cached once per study
    assert len(caches) == 2 and all((c / "train_teacher_entropy.npy").exists() for c in caches)


def test_a_search_and_a_full_run_learn_from_a_teacher_of_another_family_and_tokenizer(tmp_path, teacher_dirs):
    """A GPT-2 teacher and a Llama teacher with its own tokenizer, from the command line: the
    second teaches through universal logit distillation at the positions aligned with the
    student's tokens, in the search and in `nas distill`."""
    from distill.cache import PreparedData
    from distill.teachers import train_tokenizer
    from nas.full import export_dir
    from tests.conftest import corpus, save_tiny_teacher

    other = save_tiny_teacher(tmp_path / "other-tokenizer", "llama", train_tokenizer(corpus()[::-1], 400))
    path = _two_teachers(write_spec(tmp_path, teacher_dirs["gpt2"], name="experts"), other)
    nas = [sys.executable, "-m", "nas"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*nas, *args], capture_output=True, text=True, timeout=900)

    # without a term that needs no shared vocabulary it is refused in one line, before any trial runs
    proc = run("search", str(path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "teacher[1].model: " in proc.stderr and "add [loss] uld = 1.0" in proc.stderr and "Traceback" not in proc.stderr
    uld = ["loss.uld=1.0"]
    proc = run("search", str(path), *uld, "study.trials=2", "--no-report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = load_spec(path, uld)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    assert len(distinct_complete(study)) == 2 and not study.get_trials(states=(TrialState.FAIL,))
    caches = [PreparedData(c) for c in sorted((spec.out_dir / "cache").iterdir())]
    (aligned,) = [c for c in caches if c.aligned]
    (first,) = [c for c in caches if not c.aligned]
    assert aligned.meta["plan"]["train"] == ["ranked"] and first.meta["plan"]["train"] == ["topk"]
    assert (aligned.array("train_blocks") == first.array("train_blocks")).all()  # the student's items
    share = float(aligned.array("train_teacher_aligned").mean())
    assert 0.4 < share < 1.0, share  # most positions have a teacher token starting where theirs does
    # the full run of the best trial learns from both, and its export loads
    full = ["full.steps=6", "full.batch_size=4", "full.eval_every=3", "full.checkpoint_every=3"]
    proc = run("distill", str(path), *uld, *full, "--best", "perplexity")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (number,) = [int(p.name) for p in (spec.out_dir / "students").iterdir()]
    code = "import sys\nfrom transformers import AutoModelForCausalLM\nAutoModelForCausalLM.from_pretrained(sys.argv[1])"
    assert subprocess.run([sys.executable, "-c", code, str(export_dir(spec, number))], timeout=300).returncode == 0
    card = (export_dir(spec, number) / "README.md").read_text()
    assert "universal logit distillation" in card and str(other.name) in card and "the first teacher's tokenizer" in card
