"""`nas rank-check` and `[[eval]]` sets on a tiny study: trials and full runs scored on an extra
set, brief-vs-full correlations stored and equal to scipy's on the stored pairs, full runs
never repeated, and the report drawing them."""

import inspect
import json
import subprocess
import sys

import optuna
import pytest
from scipy import stats

from nas.full import export_dir
from nas.pareto import front_table
from nas.search import run_search
from nas.spec import load_spec
from nas.study import distilled_records, distinct_complete
from tests.conftest import write_spec

EXTRA = """
[[eval]]
name = "modules"
source = "json"
files = ["modules.jsonl"]
text_column = "doc"
eval_blocks = 6
"""


def _nas(*args):
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study_spec(tmp_path_factory, teacher_dirs, ray_local):
    import csv
    import email
    import http.client
    import logging
    import os

    folder = tmp_path_factory.mktemp("rank-check")
    docs = [inspect.getdoc(m) for m in (csv, email, http.client, logging, os, json, inspect)]
    (folder / "modules.jsonl").write_text("\n".join(json.dumps({"doc": d}) for d in docs))
    path = write_spec(folder, teacher_dirs["gpt2"], name="fid", extra=EXTRA)
    overrides = ["study.trials=5", "multi_fidelity.enabled=false", "space.families=['gpt2', 'llama']"]
    spec = load_spec(path, overrides)
    run_search(spec)
    return path, spec, overrides


def test_every_trial_is_scored_on_the_extra_set(study_spec):
    _, spec, _ = study_spec
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    teacher = study.user_attrs["eval_sets"]["modules"]
    assert teacher["perplexity"] > 1 and teacher["params"] > 0
    for t in distinct_complete(study):
        scored = t.user_attrs["eval_sets"]["modules"]
        assert set(scored) == {"perplexity", "kl", "top1_agreement"}
        assert scored["perplexity"] != t.user_attrs["perplexity"]  # another set, another number
    table = front_table(study)
    assert "modules perplexity" in table.splitlines()[1]


def test_rank_check_measures_stores_and_never_distills_twice(study_spec):
    path, spec, overrides = study_spec
    full = ["full.steps=12", "full.batch_size=4", "full.eval_every=6", "full.checkpoint_every=6"]
    proc = _nas("rank-check", str(path), "--trials", "3", *overrides, *full)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Kendall tau" in proc.stdout and "non-embedding params" in proc.stdout
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    result = study.user_attrs["rank_check"]
    distilled = distilled_records(study)
    numbers = [r["trial"] for r in result["trials"]]
    assert len(numbers) == 3 and set(numbers) == {int(n) for n in distilled}
    best = min(distinct_complete(study), key=lambda t: t.user_attrs["perplexity"])
    assert best.number in numbers  # the pick users would make is checked
    assert result["pick"]["trial"] == best.number and result["pick"]["gap"] >= 0
    assert result["pick"]["best_full"] == min(distilled[str(n)]["metrics"]["perplexity"] for n in numbers)
    for metric in ("perplexity", "kl", "top1_agreement"):
        brief = [study.trials[n].user_attrs[metric] for n in numbers]
        ends = [distilled[str(n)]["metrics"][metric] for n in numbers]
        stored = result["metrics"][metric]
        assert stored["brief"]["kendall_tau"] == pytest.approx(stats.kendalltau(brief, ends).statistic)
        assert stored["brief"]["spearman"] == pytest.approx(stats.spearmanr(brief, ends).statistic)
        sign = -1 if metric != "top1_agreement" else 1  # more parameters: lower perplexity, higher agreement
        proxy = [sign * study.trials[n].user_attrs["non_embedding_params"] for n in numbers]
        assert stored["proxy"]["kendall_tau"] == pytest.approx(stats.kendalltau(proxy, ends).statistic)
    card = (export_dir(spec, numbers[0]) / "README.md").read_text()
    assert "Quality on other data" in card and "modules" in card
    assert "modules" in distilled[str(numbers[0])]["eval_sets"]
    finished = {n: r["finished"] for n, r in distilled.items()}
    again = _nas("rank-check", str(path), "--trials", "3", *overrides, *full)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("fully distilled already") == 3
    after = distilled_records(optuna.load_study(study_name=spec.name, storage=spec.storage_url))
    assert {n: r["finished"] for n, r in after.items()} == finished
    # another [full] budget never silently replaces those exports
    shorter = _nas("rank-check", str(path), "--trials", "3", *overrides, *full[1:], "full.steps=6")
    assert shorter.returncode == 2 and "another [full] budget" in shorter.stderr and "--overwrite" in shorter.stderr
    assert len(shorter.stderr.strip().splitlines()) == 1, shorter.stderr
    after = distilled_records(optuna.load_study(study_name=spec.name, storage=spec.storage_url))
    assert {n: r["finished"] for n, r in after.items()} == finished
    # the card's command reproduces the export: the same spec and overrides, one trial
    assert f"--trial {numbers[0]}" in card and "full.steps=12" in card
    report = _nas("report", str(path), *overrides)
    assert report.returncode == 0, report.stderr[-2000:]
    html = (spec.out_dir / "report.html").read_text()
    assert "Brief against full perplexity" in html and "modules perplexity" in html
    # the front's distilled points: the full run's quality on the extra set beside the brief run's
    assert "full modules perplexity" in html and "full modules perplexity" in front_table(study)
    assert "modules: after the brief run" in card


def test_rank_check_needs_three_complete_trials(tmp_path, teacher_dirs, ray_local):
    path = write_spec(tmp_path, teacher_dirs["gpt2"], name="few")
    run_search(load_spec(path, ["study.trials=2", "multi_fidelity.enabled=false"]))
    proc = _nas("rank-check", str(path), "--trials", "4")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "at least 3" in proc.stderr


def test_few_trials_get_a_permutation_p_and_no_interval_many_get_both():
    from nas.rank_check import MIN_FOR_INTERVAL, correlations

    four = correlations([1, 2, 3, 4], [10, 20, 30, 40], seed=0)
    assert four["n"] == 4 and four["kendall_tau"] == 1.0 and four["kendall_tau_interval"] is None
    assert four["kendall_tau_p"] == pytest.approx(1 / 24)  # exact: one order of 24 agrees as well
    n = MIN_FOR_INTERVAL + 2
    noisy = correlations(list(range(n)), [x + (3 if x % 4 == 0 else 0) for x in range(n)], seed=0)
    low, high = noisy["spearman_interval"]
    assert low < noisy["spearman"] <= high and noisy["spearman_p"] < 0.01


def test_the_rank_checks_plan_depends_on_the_seed_not_on_earlier_full_runs(study_spec):
    from nas.rank_check import pick_trials

    _, spec, _ = study_spec
    memory = optuna.storages.InMemoryStorage()  # a copy to mark full runs in
    optuna.copy_study(from_study_name=spec.name, from_storage=spec.storage_url, to_storage=memory, to_study_name="copy")
    study = optuna.load_study(study_name="copy", storage=memory)
    plan = [t.number for t in pick_trials(study, "perplexity", "min", 3, seed=0)]
    best = min(distinct_complete(study), key=lambda t: t.user_attrs["perplexity"])
    assert best.number in plan
    # a full run of every other trial (earlier runs of another plan) moves nothing
    for t in distinct_complete(study):
        if t.number not in plan:
            study.set_user_attr(f"distilled:{t.number}", {"metrics": {"perplexity": 1.0}, "steps": 1})
    assert [t.number for t in pick_trials(study, "perplexity", "min", 3, seed=0)] == plan


def test_the_schedulers_regret_counts_stopped_trials_that_beat_a_completed_one_at_least_as_large():
    from nas.rank_check import scheduler_regret

    def row(trial, ppl, size):
        return {"trial": trial, "full": {"perplexity": ppl}, "non_embedding_params": size}

    complete = [row(1, 300.0, 1000), row(2, 280.0, 5000), row(3, 320.0, 200)]
    stopped = [row(7, 290.0, 800), row(8, 330.0, 900), row(9, None, 100)]
    regret = scheduler_regret(stopped, complete, "perplexity", "min")
    assert regret["beats"] == {"7": [1], "8": []}  # 7 beats 1 (larger, worse); 3 is smaller; 9 has no full run
    assert (regret["stopped"], regret["regretted"], regret["share"]) == (2, 1, 0.5)
