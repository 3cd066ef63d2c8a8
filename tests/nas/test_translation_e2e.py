"""End to end for the translation task: a real tiny search through Ray Tune + Optuna with a
Marian teacher built from a config, on the gettext catalogs pycountry ships."""

import pytest
from optuna.trial import TrialState

from nas.report import write_report
from nas.search import distinct_complete, run_search
from nas.spec import load_spec
from tests.conftest import write_translation_spec

pytestmark = pytest.mark.usefixtures("ray_local")


def test_translation_search_end_to_end(tmp_path, translation_teacher):
    study = run_search(load_spec(write_translation_spec(tmp_path, translation_teacher)))
    complete = distinct_complete(study)
    assert len(complete) == 3 and not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))
    for t in complete:
        assert {"bleu", "chrf", "kl", "params", "latency_ms", "sentences_per_s"} <= set(t.user_attrs)
        assert 0.0 <= t.user_attrs["chrf"] <= 100.0 and t.values == [t.user_attrs["chrf"], t.user_attrs["params"]]
        assert t.user_attrs["arch"]["family"] in ("marian", "t5")
    # what reading the catalogs found and how the scores were computed, kept with the study
    pairs = study.user_attrs["data_info"]["pairs"]
    assert pairs["kept"] > 3000 and pairs["untranslated"] > 1000 and pairs["read"] > pairs["kept"]
    assert set(study.user_attrs["scoring"]) == {"bleu", "chrf"}
    assert study.user_attrs["scoring"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6")
    html = write_report(study, tmp_path / "report.html").read_text()
    assert "scoring: bleu nrefs:1|" in html and "untranslated" in html
