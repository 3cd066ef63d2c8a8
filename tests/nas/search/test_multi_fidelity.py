"""Multi-fidelity, constraints and the sampler choice, in real tiny searches through Ray Tune +
Optuna on CPU."""

import optuna
import pytest
from optuna.trial import TrialState

from distill.errors import InputError
from nas.full import select_trial
from nas.pareto import front_rows
from nas.report import write_report
from nas.search import run_search
from nas.spec import load_spec
from nas.study import distinct_complete, distinct_evaluated, front_trials, is_feasible
from tests.conftest import write_spec

pytestmark = pytest.mark.usefixtures("ray_local")

WIDE = ["space.families=['gpt2', 'llama']", "space.layers=[1, 2]", "space.head_dim=[8, 16]"]


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory, teacher_dirs):
    """8 architectures with rungs at 2, 4 and 8 steps; one at a time (decisions depend on the order), a third kept at each rung."""
    folder = tmp_path_factory.mktemp("mf")
    spec = load_spec(
        write_spec(folder, teacher_dirs["gpt2"], name="mf"),
        ["study.trials=8", "study.seed=2", "study.concurrency=1", "brief.steps=8", "multi_fidelity.reduction=3", *WIDE],
    )
    return spec, run_search(spec)


def test_multi_fidelity_stops_dominated_trials_and_keeps_them_off_the_front(pruned_study):
    spec, study = pruned_study
    assert 6 <= len(distinct_evaluated(study)) <= 8  # repeats do not count; three rounds of them in a row end the search
    pruned = [t for t in study.get_trials(states=(TrialState.PRUNED,)) if "duplicate_of" not in t.user_attrs]
    assert pruned, "no trial was stopped at a rung"
    front = {t.number for t in front_trials(study)}
    for t in pruned:
        rung = t.user_attrs["pruned_at"]["rung"]
        assert rung in (0, 1) and t.user_attrs["pruned_at"]["step"] in (2, 4)
        assert len(t.user_attrs["rungs"]) == rung + 1  # the rungs it reached, with its quality there
        assert t.user_attrs["perplexity"] == t.user_attrs["rungs"][-1]["perplexity"]
        assert t.number not in front and t.values is None
    for t in distinct_complete(study):
        assert [r["step"] for r in t.user_attrs["rungs"]] == [2, 4, 8]
        assert t.user_attrs["train_steps"] == 8
    best = select_trial(study, metrics={"perplexity": "min"}, best="perplexity")
    assert best.state == TrialState.COMPLETE
    # a trial stopped at a rung is a whole architecture: `nas distill --trial` takes it
    assert select_trial(study, metrics={"perplexity": "min"}, number=pruned[0].number).number == pruned[0].number


def test_rank_check_fully_distills_stopped_trials_and_measures_the_schedulers_regret(pruned_study):
    import dataclasses

    from nas.commands import rank_check
    from nas.study import distilled_records

    spec, study = pruned_study
    full = dataclasses.replace(spec.full, steps=8, eval_every=4, checkpoint_every=4)
    spec = dataclasses.replace(spec, full=full)
    result = rank_check(spec, trials=3, stopped=2).measurement
    regret = result["regret"]
    stopped = [r["trial"] for r in result["stopped"]]
    assert len(stopped) == 2 and regret["stopped"] == 2 and regret["metric"] == "perplexity"
    assert all(study.trials[n].user_attrs["pruned_at"]["step"] in (2, 4) for n in stopped)
    assert set(stopped) | {r["trial"] for r in result["trials"]} == {int(n) for n in distilled_records(study)}
    complete = {r["trial"]: r for r in result["trials"]}
    for s in result["stopped"]:  # what it beats: completed trials at least as large, worse after the full run
        expected = [c for c, r in complete.items() if r["non_embedding_params"] >= s["non_embedding_params"]
                    and s["full"]["perplexity"] < r["full"]["perplexity"]]  # fmt: skip
        assert regret["beats"][str(s["trial"])] == expected
    assert regret["regretted"] == sum(bool(v) for v in regret["beats"].values())


def test_constraints_filter_the_front_and_best(tmp_path, teacher_dirs):
    """A bound on parameters is checked before a trial starts; one on perplexity after it."""
    one = "study.concurrency=1"  # the same proposals on every run: the bounds below are met for sure
    spec = load_spec(write_spec(tmp_path, teacher_dirs["gpt2"], name="bounded"), ["study.trials=4", one, *WIDE])
    free = run_search(spec.with_storage(f"sqlite:///{tmp_path / 'free.db'}"))
    sizes = sorted(t.user_attrs["params"] for t in distinct_complete(free))
    ppl = sorted(t.user_attrs["perplexity"] for t in distinct_complete(free))
    bounds = [f"constraints.params={sizes[-1] - 1}", f"constraints.perplexity={ppl[-1] - 1e-6}"]
    bounded = load_spec(spec.path, ["study.trials=6", "study.name=bounded2", "multi_fidelity.enabled=false", one, *WIDE, *bounds])
    study = run_search(bounded)
    untrained = [t for t in study.trials if "not_trained" in t.user_attrs and "duplicate_of" not in t.user_attrs]
    assert untrained, "no architecture was refused before training"
    for t in untrained:
        assert t.state == TrialState.PRUNED and t.user_attrs["params"] > sizes[-1] - 1
        assert "train_steps" not in t.user_attrs and t.constraints["params"] > 0
    feasible = [t for t in distinct_complete(study) if is_feasible(t)]
    front = front_trials(study)
    assert front and {t.number for t in front} <= {t.number for t in feasible}
    for t in distinct_complete(study):
        assert t.user_attrs["params"] <= sizes[-1] - 1  # nothing too large was trained
    best = select_trial(study, metrics={"perplexity": "min"}, best="perplexity")
    assert best.number in {t.number for t in feasible}
    assert {r["trial"] for r in front_rows(study)} == {t.number for t in front}
    html = write_report(study, tmp_path / "report.html").read_text()
    infeasible = len(distinct_complete(study)) - len(feasible)  # trained, then beyond the perplexity bound
    assert infeasible > 0
    assert f"{infeasible} infeasible" in html
    assert "Infeasible Trial" in html  # Optuna's grey points, named so on hover


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_model_based_samplers_get_past_their_random_start_with_constraints(tmp_path, teacher_dirs, sampler):
    """The study's space and the sampler as a search makes them, 16 proposals scored by a
    synthetic two-objective function with a bound on size: well past each sampler's random
    start, so its own model (TPE's densities, NSGA-II's generations, GP's kernel) and its use
    of the constraints run. Without Ray or training: the proposals are what is tested."""
    from nas.search.sampling import SAMPLERS, make_sampler

    spec = load_spec(write_spec(tmp_path, teacher_dirs["llama"], name="synthetic"), WIDE)
    made = make_sampler(sampler, seed=0, trials=16)
    kinds = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler, "gp": optuna.samplers.GPSampler}
    assert isinstance(made, kinds[sampler])
    assert set(SAMPLERS) == {"tpe", "nsga2", "gp", "random"}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=made)
    for _ in range(16):
        trial = study.ask()
        arch = spec.space.sample(trial)
        size = arch["layers"] * arch["heads"] * arch["head_dim"]
        trial.set_constraint("size", (size - 32) / 32)
        study.tell(trial, [1.0 / size + 0.01 * arch["layers"], float(size)])
    assert len(study.trials) == 16 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(t.constraints is not None for t in study.trials)
    assert study.best_trials and all(t.constraints["size"] <= 0 for t in study.best_trials)


def test_gp_sees_trials_stopped_at_a_rung_and_moves_on():
    """GPSampler models COMPLETE trials only: a discrete space whose best-looking corner is
    always stopped at its first rung would draw it back again and again. The study's GP sees
    a stopped trial at its rung's quality and its size, and goes on to other architectures."""
    from nas.search.sampling import make_sampler, stopped_as_complete

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler("gp", seed=0, trials=12))
    study.set_metric_names(["quality", "params"])
    told: dict[tuple[int, int], tuple[TrialState, list[float] | None]] = {}
    for _ in range(20):
        trial = study.ask()
        arch = (trial.suggest_int("x", 0, 7), trial.suggest_int("y", 0, 3))
        if arch in told:  # a repeat, as the search records one
            trial.set_user_attr("duplicate_of", 0)
            study.tell(trial, told[arch][1], state=told[arch][0])
            continue
        quality, params = 10.0 - arch[0] + arch[1], float(arch[0])
        if arch[1] == 0:  # stopped at its first rung, where it was worse than it would end
            trial.set_user_attr("params", params)
            trial.set_user_attr("rungs", [{"step": 1, "quality": quality + 6}])
            told[arch] = (TrialState.PRUNED, None)
        else:
            told[arch] = (TrialState.COMPLETE, [quality, params])
        study.tell(trial, told[arch][1], state=told[arch][0])
    stopped = {(t.params["x"], t.params["y"]) for t in study.trials if t.state == TrialState.PRUNED}
    shown = stopped_as_complete(study)
    assert stopped and len(shown) == len(stopped)
    assert all(t.values == [16.0 - t.params["x"], float(t.params["x"])] for t in shown)
    assert len(told) >= 12  # Optuna's own GPSampler, on the same proposals: 6 distinct in 20


def test_a_gp_search_with_multi_fidelity_reaches_its_trial_count_without_repeats(tmp_path, teacher_dirs):
    """Through Ray Tune: 14 architectures, half of them proposed by GP's model with stopped
    trials in the study. Optuna's own GPSampler, in this search, re-proposed stopped
    architectures and ended its three rounds at 11 distinct."""
    path = write_spec(tmp_path, teacher_dirs["llama"], name="gp-mf")
    args = ["study.sampler=gp", "study.trials=14", "study.seed=2", "study.concurrency=1", "brief.steps=8"]
    study = run_search(load_spec(path, [*args, "multi_fidelity.reduction=3", *WIDE]))
    stopped = [t for t in study.trials if "pruned_at" in t.user_attrs]
    assert len(stopped) >= 4 and len(distinct_evaluated(study)) == 14


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_each_sampler_runs_a_search_and_a_resumed_study_keeps_it(tmp_path, teacher_dirs, sampler):
    path = write_spec(tmp_path, teacher_dirs["llama"], name=f"s-{sampler}")
    study = run_search(load_spec(path, [f"study.sampler={sampler}", "multi_fidelity.enabled=false", *WIDE]))
    assert len(distinct_complete(study)) == 3 and study.user_attrs["sampler"] == sampler
    resumed = run_search(load_spec(path, ["study.trials=4", "multi_fidelity.enabled=false", *WIDE]))
    assert len(distinct_complete(resumed)) == 4 and resumed.user_attrs["sampler"] == sampler
    other = "random" if sampler != "random" else "tpe"
    with pytest.raises(InputError, match=f"study.sampler: .* samples with {sampler}"):
        run_search(load_spec(path, [f"study.sampler={other}", "study.trials=5", *WIDE]))
    assert len(optuna.load_study(study_name=f"s-{sampler}", storage=load_spec(path).storage_url).trials) >= 4


def test_a_size_bound_measured_in_the_trial_stops_it_before_training(tmp_path, teacher_dirs):
    """latency_ms is measured on the built student: a trial that misses it is not trained, and
    the search goes on; a resumed study keeps the bounds it was searched with."""
    path = write_spec(tmp_path, teacher_dirs["gpt2"], name="slow")
    args = ["study.trials=2", "multi_fidelity.enabled=false", "constraints.latency_ms=1e-9", *WIDE]
    study = run_search(load_spec(path, args))
    untrained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert untrained and all(t.state == TrialState.PRUNED for t in untrained)
    assert all("latency_ms" in t.user_attrs["not_trained"] and "train_steps" not in t.user_attrs for t in untrained)
    assert front_trials(study) == []
    with pytest.raises(InputError, match="constraints: the stored study 'slow' was searched with"):
        run_search(load_spec(path, ["study.trials=3", "constraints.latency_ms=5", *WIDE]))


def test_only_the_schedulers_stops_are_stored_as_stopped_at_a_rung(tmp_path):
    """A trial that ends after a rung's report because the scheduler stopped it is PRUNED with
    its rung; one that ends there for any other reason (the search stopped, its actor died)
    is FAIL as interrupted, not a trial the scheduler judged."""
    from nas.search._ray import StudySearcher
    from nas.spec import Constraints
    from nas.study import INTERRUPTED

    class Inner:  # the part of OptunaSearch the searcher calls
        metric, mode, told = ["perplexity"], ["min"], []

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.told.append((trial_id, result, error))

    study = optuna.create_study(directions=["minimize"])
    for _ in range(2):
        study.ask()
    stopped = {"a": 0}  # the scheduler's record: trial a stopped at rung 0
    searcher = StudySearcher(Inner(), study, ["perplexity"], ("perplexity",), Constraints(()), tmp_path, stopped)
    searcher.numbers = {"a": 0, "b": 1}
    rung_report = {"perplexity": 400.0, "rung": 0, "final": False, "step": 2}
    searcher.on_trial_complete("a", rung_report)
    searcher.on_trial_complete("b", rung_report)
    assert study.trials[0].user_attrs["pruned_at"] == {"rung": 0, "step": 2}
    assert "pruned_at" not in study.trials[1].user_attrs and study.trials[1].user_attrs["fail_reason"] == INTERRUPTED
    assert Inner.told == [("a", None, False), ("b", None, True)]
