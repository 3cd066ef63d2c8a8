"""The recipe searched with the architecture (`[space.recipe]`): sampled per trial, recorded,
shown in the front and the report, and reused by `nas distill`."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from distill import Budget, LossConfig
from nas.recipe import RecipeSpace, apply_recipe, describe_recipe
from nas.search import run_search
from nas.spec import SpecError, load_spec
from nas.study import distilled_records, distinct_complete
from tests.conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]
RECIPE = [
    "space.recipe.loss=['forward_kl', 'jsd']",
    "space.recipe.temperature=[1.0, 2.0]",
    "space.recipe.ce=[0.0, 0.5]",
    "space.recipe.intermediate=[0.0, 1.0]",
]


def test_a_recipe_replaces_the_parts_it_names():
    loss = LossConfig({"forward_kl": 0.8, "reverse_kl": 0.2, "ce": 0.5}, {"temperature": 2.0, "top_k": 8})
    budget = Budget(steps=10)
    same = apply_recipe(loss, budget, None)
    assert same == (loss, budget)
    recipe = {"loss": "jsd", "temperature": 1.0, "ce": 0.0, "intermediate": 0.5, "on_policy": 0.25}
    got, brief = apply_recipe(loss, budget, recipe)
    assert got.weights == {"jsd": 1.0, "ce": 0.0, "hidden": 0.5}  # the divergences' weight, now one term's
    assert got.params == {"temperature": 1.0, "top_k": 8} and brief.on_policy == 0.25 and brief.steps == 10
    assert describe_recipe(recipe) == "jsd T=1 ce=0 hidden=0.5 on-policy=0.25"
    trial = optuna.create_study().ask()
    assert set(RecipeSpace(loss=("jsd",), ce=(0.0, 1.0)).sample(trial)) == {"loss", "ce"}
    assert set(trial.params) == {"recipe_loss", "recipe_ce"} and not RecipeSpace()


def test_the_spec_checks_every_recipe_it_may_sample():
    spec = load_spec(ROOT / "studies/demo-lm.toml", RECIPE)
    assert spec.recipe.loss == ("forward_kl", "jsd") and spec.recipe.temperature == (1.0, 2.0)
    refused = {
        "space.recipe.loss=['cosine']": r"^space\.recipe\.loss: 'cosine' is not a divergence of task causal-lm; allowed: forward_kl, reverse_kl",
        "space.recipe.temperature=[0.0]": r"^space\.recipe\.temperature: must be > 0",
        "space.recipe.on_policy=[1.5]": r"^space\.recipe\.on_policy: shares of the batches",
        "space.recipe.width=[1]": r"^space\.recipe\.width: unknown key; allowed: ce, intermediate, loss, on_policy, temperature",
        "space.recipe.loss='jsd'": r"^space\.recipe\.loss: must be a list",
    }
    for override, message in refused.items():
        with pytest.raises(SpecError, match=message):
            load_spec(ROOT / "studies/demo-lm.toml", [override])
    with pytest.raises(SpecError, match=r"^space\.recipe\.on_policy: task embedding has no outputs of its own"):
        load_spec(ROOT / "studies/demo.toml", ["space.recipe.on_policy=[0.5]"])
    with pytest.raises(SpecError, match=r"^space\.recipe\.temperature: task embedding's loss has no temperature"):
        load_spec(ROOT / "studies/demo.toml", ["space.recipe.temperature=[2.0]"])
    with pytest.raises(SpecError, match=r"^space\.recipe\.loss: 'forward_kl' is not a divergence of task embedding"):
        load_spec(ROOT / "studies/demo.toml", ["space.recipe.loss=['forward_kl']"])
    with pytest.raises(SpecError, match=r"^space\.recipe: the recipe 'ce=0' cannot train: weights: at least one term"):
        load_spec(ROOT / "studies/demo-lm.toml", ["space.recipe.ce=[0.0]", "loss.forward_kl=0", "loss.ce=1"])


@pytest.mark.usefixtures("ray_local")
def test_a_search_with_a_searchable_recipe_records_shows_and_distills_it(tmp_path, teacher_dirs):
    path = write_spec(tmp_path, teacher_dirs["llama"], name="recipes")
    spec = load_spec(path, [*RECIPE, "study.trials=4", "study.concurrency=1", "multi_fidelity.enabled=false"])
    study = run_search(spec)
    done = distinct_complete(study)
    assert len(done) == 4
    for t in done:
        recipe = t.user_attrs["recipe"]
        assert set(recipe) == {"loss", "temperature", "ce", "intermediate"}
        assert t.params["recipe_loss"] == recipe["loss"]
    # the teachers' outputs at each temperature the recipe may choose, hidden states included
    caches = sorted((spec.out_dir / "cache").iterdir())
    assert len(caches) == 2 and all((c / "train_teacher_decoder_hidden.npy").exists() for c in caches)
    overrides = [*RECIPE, "study.trials=4", "multi_fidelity.enabled=false"]
    table = subprocess.run(
        [sys.executable, "-m", "nas", "pareto", str(path), *overrides], capture_output=True, text=True, timeout=300
    )
    assert table.returncode == 0, table.stderr[-2000:]
    assert "architecture | recipe" in table.stdout and ("forward_kl T=" in table.stdout or "jsd T=" in table.stdout)
    front = json.loads(
        subprocess.run(
            [sys.executable, "-m", "nas", "pareto", str(path), *overrides, "--json"], capture_output=True, text=True, timeout=300
        ).stdout
    )
    assert all(row["recipe"] for row in front["front"])
    report = subprocess.run(
        [sys.executable, "-m", "nas", "report", str(path), *overrides, "--color-by", "recipe"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    assert "coloured by recipe" in (spec.out_dir / "report.html").read_text()
    # nas distill trains with the trial's recipe
    pick = front["front"][0]
    full = ["full.steps=6", "full.batch_size=4", "full.eval_every=3", "full.checkpoint_every=3"]
    proc = subprocess.run(
        [sys.executable, "-m", "nas", "distill", str(path), *overrides, "--trial", str(pick["trial"]), *full],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = distilled_records(optuna.load_study(study_name=spec.name, storage=spec.storage_url))[str(pick["trial"])]
    assert record["recipe"] == pick["recipe"]
    card = (Path(record["export"]) / "README.md").read_text()
    divergence = "generalized Jensen-Shannon" if pick["recipe"]["loss"] == "jsd" else "KL(teacher || student)"
    assert divergence in card and f"temperature {pick['recipe']['temperature']}" in card
