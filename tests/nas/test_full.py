"""End to end: search, fully distill the best trial, kill and resume, load the export with plain
transformers, and the refusals of bad input."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file

from distill import PreparedData
from distill.precision import computing_in, resolve
from distill.tasks import get_task
from nas.full import checkpoint_dir, export_dir
from nas.pareto import front_table
from nas.search import run_search
from nas.spec import load_spec
from nas.study import distilled_records, front_trials
from tests.conftest import write_spec

STEPS = 200
FULL = [f"full.steps={STEPS}", "full.batch_size=4", "full.eval_every=50", "full.checkpoint_every=20", "full.lr=3e-3"]
FULL += ["full.on_policy=0.25"]  # a quarter of the batches on the student's own continuations (GKD)


pytestmark = pytest.mark.slow  # searches and full runs end to end


def _nas(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "nas", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


@pytest.fixture(scope="module")
def study_spec(tmp_path_factory, teacher_dirs, ray_local):
    folder = tmp_path_factory.mktemp("full")
    path = write_spec(folder, teacher_dirs["llama"], name="fulltiny")
    spec = load_spec(path)
    run_search(spec)
    return path, spec


@pytest.fixture(scope="module")
def distilled(study_spec):
    """One uninterrupted full run of the best-perplexity front trial, with its ONNX Runtime files."""
    path, spec = study_spec
    proc = _nas("distill", str(path), "--best", "perplexity", "--runtime", "onnx", "--int8", *FULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    number = int(next(iter(distilled_records(study))))
    return path, spec, number, proc


def test_best_picks_the_front_trial_with_the_lowest_perplexity(distilled):
    path, spec, number, proc = distilled
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    best = min(front_trials(study), key=lambda t: t.user_attrs["perplexity"])
    assert number == best.number
    assert f"exported: {export_dir(spec, number)}" in proc.stdout


def test_export_loads_and_generates_with_plain_transformers(distilled, tmp_path):
    _, spec, number, _ = distilled
    code = (
        "import sys; from transformers import AutoModelForCausalLM, pipeline\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "out = pipeline('text-generation', model=sys.argv[1])('The', max_new_tokens=8, do_sample=False)\n"
        "assert 'nas' not in sys.modules and 'distill' not in sys.modules\n"
        "print(type(m).__name__, repr(out[0]['generated_text']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(export_dir(spec, number))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ForCausalLM" in proc.stdout and proc.stdout.split(" ", 1)[1].startswith("'The")
    files = {p.name for p in export_dir(spec, number).iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json"} <= files
    assert not any(f.endswith(".bin") for f in files)


def test_the_export_runs_in_onnx_runtime_and_its_card_gives_its_figures_beside_the_teachers(distilled, tmp_path):
    from distill import runtime

    _, spec, number, proc = distilled
    folder = export_dir(spec, number)
    assert {p.name for p in (folder / "onnx").iterdir()} == {"model.onnx", "model_int8.onnx"}
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    record = distilled_records(study)[str(number)]
    measured = {m.name for m in spec.task.metrics if m.runtime}
    assert measured <= set(record["metrics"]) and measured == set(record["teacher_runtime"])
    assert record["metrics"]["runtime_int8_file_mb"] < record["metrics"]["runtime_fp32_file_mb"]
    assert record["teacher_runtime"]["runtime_int8_file_mb"] < record["teacher_runtime"]["runtime_fp32_file_mb"]
    card = (folder / "README.md").read_text()
    for m in spec.task.metrics:
        if m.runtime:
            value, teacher = m.format(record["metrics"][m.name]), m.format(record["teacher_runtime"][m.name])
            assert f"| {m.label} | {value} |" in card and f"| {teacher} |" in card, m.name
    assert "runtime_int8_perplexity: full" in proc.stdout  # the command's summary names the runtime's scores too
    # the card's snippet, as printed there, on the int8 model: no torch, no project
    code = card.split("## In ONNX Runtime", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("path/to/this/folder", str(folder)) + "\nimport sys\nassert not {'torch', 'nas', 'distill'} & set(sys.modules)\n"
    assert "model_int8.onnx" in code
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("The")
    # the fp32 graph scores as the exported PyTorch model did
    data = PreparedData(next((spec.out_dir / "cache").iterdir()))
    fp32 = runtime.measure_files(spec.task, {"model": folder / "onnx" / "model.onnx"}, data, "fp32", speed=False)
    assert fp32["runtime_fp32_perplexity"] == pytest.approx(record["metrics"]["runtime_fp32_perplexity"], rel=1e-6)


def test_model_card_numbers_match_a_fresh_evaluation(distilled):
    from transformers import AutoModelForCausalLM

    _, spec, number, _ = distilled
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    record = distilled_records(study)[str(number)]
    data = PreparedData(next((spec.out_dir / "cache").iterdir()))
    model = AutoModelForCausalLM.from_pretrained(export_dir(spec, number))
    assert record["precision"] == resolve("auto", torch.device("cpu")) == data.precision  # the spec's default
    with computing_in(record["precision"]):  # as the run measured it (the card says which)
        fresh = get_task("causal-lm").evaluate(model, data, "eval", torch.device("cpu"))
    card = (export_dir(spec, number) / "README.md").read_text()
    assert f"- Precision: {record['precision']}" in card
    for key, fmt in (("perplexity", "{:.2f}"), ("kl", "{:.4f}"), ("top1_agreement", "{:.3f}")):
        assert fresh[key] == pytest.approx(record["metrics"][key], rel=1e-4, abs=1e-6)
        assert fmt.format(record["metrics"][key]) in card
    assert f"{record['metrics']['params']:,}" in card and "student after the brief search run" in card
    # the full run beats the brief one (this tiny teacher is untrained: no claim about it here)
    assert record["metrics"]["perplexity"] < record["brief"]["perplexity"]


def test_study_remembers_what_was_distilled(distilled):
    path, spec, number, _ = distilled
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    assert "full perplexity" in front_table(study)
    assert {t.user_attrs["precision"] for t in study.trials} == {resolve("auto", torch.device("cpu"))}
    proc = _nas("pareto", str(path), "--json")
    rows = {r["trial"]: r for r in json.loads(proc.stdout)["front"]}
    assert rows[number]["full"]["export"] == str(export_dir(spec, number))
    assert _nas("report", str(path)).returncode == 0
    assert "Fully distilled students" in (spec.out_dir / "report.html").read_text()


def test_killed_run_resumes_to_the_same_weights(distilled):
    path, spec, number, _ = distilled
    reference = load_file(export_dir(spec, number) / "model.safetensors")
    last = checkpoint_dir(spec, number) / "last.pt"
    args = [sys.executable, "-m", "nas", "distill", str(path), "--trial", str(number), "--overwrite", *FULL]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    step = torch.load(last, weights_only=True)["state"]["step"]
    assert 0 < step < STEPS
    stamp = last.stat().st_mtime_ns
    # The checkpoint is never dropped silently, nor continued with other settings.
    line = _one_error_line(_nas("distill", str(path), "--trial", str(number), "--overwrite", *FULL))
    assert "pass --resume to continue it or --restart to discard it" in line
    changed = [*FULL[:-1], "full.lr=1e-3"]
    line = _one_error_line(_nas("distill", str(path), "--trial", str(number), "--overwrite", "--resume", *changed))
    assert "made with full.lr = 0.003, this run has 0.001" in line and "--restart" in line
    used = resolve("auto", torch.device("cpu"))
    other = {"bf16": "fp32", "fp32": "bf16"}[used]
    line = _one_error_line(_nas("distill", str(path), "--trial", str(number), "--overwrite", "--resume", *FULL, f"resources.precision='{other}'"))
    assert f'made with precision = "{used}", this run has "{other}"' in line
    assert last.stat().st_mtime_ns == stamp
    resumed = _nas("distill", str(path), "--trial", str(number), "--overwrite", "--resume", *FULL)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    weights = load_file(export_dir(spec, number) / "model.safetensors")
    assert weights.keys() == reference.keys()
    for k in reference:  # same seed, same data order, same RNG, same precision: the same weights
        torch.testing.assert_close(weights[k], reference[k], rtol=1e-5, atol=1e-6)


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_bad_requests_are_refused_and_nothing_is_overwritten(distilled):
    path, spec, number, _ = distilled
    model = export_dir(spec, number) / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    assert "no trial 999" in _one_error_line(_nas("distill", str(path), "--trial", "999"))
    assert "pass --overwrite" in _one_error_line(_nas("distill", str(path), "--trial", str(number)))
    line = _one_error_line(_nas("distill", str(path), "--best", "perplexity", "--max-params", "10"))
    assert "no front trial with at most 10 parameters" in line
    assert "--best: unknown metric 'bleu'" in _one_error_line(_nas("distill", str(path), "--best", "bleu"))
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert f"trial {failed.number} is FAIL" in _one_error_line(
        _nas("distill", str(path), "--trial", str(failed.number))
    )
    assert model.stat().st_mtime_ns == stamp


def test_a_study_without_complete_trials_is_refused(tmp_path, teacher_dirs):
    path = write_spec(tmp_path, teacher_dirs["gpt2"], name="empty")
    spec = load_spec(path)
    assert "no study 'empty' yet" in _one_error_line(_nas("distill", str(path), "--trial", "0"))
    spec.out_dir.mkdir()
    study = optuna.create_study(study_name=spec.name, storage=spec.storage_url, directions=["minimize", "minimize"])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert "has no complete trial" in _one_error_line(_nas("distill", str(path), "--best", "perplexity"))
    assert "no study 'nothing'" in _one_error_line(_nas("distill", str(path), "study.name='nothing'", "--trial", "0"))
    assert not Path(spec.out_dir / "students").exists()


def test_a_second_distillation_of_the_same_trial_is_refused(distilled):
    path, spec, number, _ = distilled
    long = [*FULL[1:], "full.steps=100000"]  # runs until it is killed
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", "distill", str(path), "--trial", str(number), "--overwrite", "--restart", *long],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    holder = spec.out_dir / "locks" / f"distill-{number}.lock.holder"
    deadline = time.time() + 300
    while not holder.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    try:
        line = _one_error_line(_nas("distill", str(path), "--trial", str(number), "--overwrite", "--restart", *long))
        assert f"study.name: trial {number} of study '{spec.name}' is being distilled by pid {proc.pid} on " in line
        assert proc.poll() is None  # the first run goes on
    finally:
        proc.kill()
        proc.wait()
    shutil.rmtree(checkpoint_dir(spec, number))


def test_an_export_published_but_not_recorded_is_recorded_by_the_next_run(distilled):
    path, spec, number, _ = distilled
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    record = distilled_records(study)[str(number)]
    study.set_user_attr(f"distilled:{number}", {})  # killed between publishing the export and recording it
    proc = _nas("distill", str(path), "--trial", str(number))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "recording the export of trial" in proc.stderr
    assert distilled_records(optuna.load_study(study_name=spec.name, storage=spec.storage_url))[str(number)] == record
    # An export of another architecture (another study of the same name, say) is not taken for this trial's.
    exported = json.loads((export_dir(spec, number) / "distill_nas.json").read_text())
    other = {**exported, "arch": {**exported["arch"], "n_layer": 99}, "finished": "9999-01-01 00:00:00"}
    (export_dir(spec, number) / "distill_nas.json").write_text(json.dumps(other))
    try:
        assert "pass --overwrite" in _one_error_line(_nas("distill", str(path), "--trial", str(number)))
    finally:
        (export_dir(spec, number) / "distill_nas.json").write_text(json.dumps(exported))
