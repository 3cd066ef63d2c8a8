"""Random kills survived: the search driver SIGKILLed while the teacher's outputs are cached,
while Ray starts and while trials run, restarted each time; then a full distillation killed
while it writes a checkpoint, while it trains and while it exports, resumed each time. The
checks are `nas.chaos`'s, the script users run on their own studies."""

import random

import pytest

from nas.chaos import distill_chaos, search_chaos
from nas.spec import load_spec
from nas.study import distinct_complete, load_existing_study
from tests.conftest import write_spec

pytestmark = pytest.mark.slow  # kills and restarts real searches and full runs


def test_kills_of_search_and_distill_leave_a_correct_study(tmp_path, teacher_dirs):
    path = write_spec(tmp_path, teacher_dirs["gpt2"], name="chaos")
    overrides = ["study.trials=6", "brief.steps=60"]
    spec = load_spec(path, overrides)
    said: list[str] = []
    problems = search_chaos([str(path), *overrides], spec, 5, random.Random(0), said.append)
    assert problems == [], "\n".join(said + problems)
    assert sum("within the phase" in s or "as the phase ended" in s for s in said) >= 5, said
    assert any("the teacher cache" in s and "within the phase" in s for s in said), said
    assert sum("running trials" in s and "within the phase" in s for s in said) >= 1, said
    assert any("a trial just completed" in s and "within the phase" in s for s in said), said  # none was lost

    number = distinct_complete(load_existing_study(spec))[0].number
    full = ["full.steps=120", "full.batch_size=4", "full.checkpoint_every=1", "full.eval_every=30"]
    said.clear()
    problems = distill_chaos([str(path), *overrides, *full], spec, number, 3, random.Random(0), said.append)
    assert problems == [], "\n".join(said + problems)
    assert "a checkpoint was being written" in said[0], said
    assert any("the export" in s and "within the phase" in s for s in said), said
