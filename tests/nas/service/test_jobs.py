"""Jobs on a real `nas serve`: a search and a full run started through the API, a run killed
and resumed after the server restarted, a search stopped with its completed trials kept."""

from __future__ import annotations

import json
import os
import signal

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from nas.cli import main
from tests.nas.service.conftest import Server, wait_job

pytestmark = pytest.mark.slow  # a real `nas serve` running searches and full runs
LONG = 600
"""steps of the full run killed after step 60 and resumed"""


def test_jobs_through_the_api_survive_a_server_restart(studies, capsys):
    server = Server(studies)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as api:
            job = api.post("/api/searches", json={"spec": "tiny.toml", "trials": 3}).raise_for_status().json()
            assert job["kind"] == "search" and job["command"] == "nas search studies/tiny.toml --trials 3"
            again = api.post("/api/searches", json={"spec": "tiny.toml"})
            assert again.status_code == 409 and "being searched" in again.json()["error"]
            done = wait_job(api, job["id"])
            assert done["state"] == "completed", done["log"]
            assert done["progress"]["evaluated"] == 3 and done["progress"]["target"] == 3
            assert any("search done: 3/3 architectures" in line for line in done["log"])

            study = api.get("/api/studies/tiny").json()
            assert study["evaluated"] == 3 and study["searched"] and not study["running_jobs"]
            assert len(study["trials"]) >= 3 and all(t["state"] in ("complete", "repeat") for t in study["trials"])
            assert [h["trial"] for h in study["hypervolume"]] and study["hypervolume"][-1]["hypervolume"] > 0
            front = api.get("/api/studies/tiny/front").json()
            capsys.readouterr()
            assert main(["pareto", str(studies / "tiny.toml"), "--json"]) == 0
            assert front == json.loads(capsys.readouterr().out)  # the same as `nas pareto --json`
            listed = api.get("/api/studies").json()
            assert listed[0]["evaluated"] == 3 and listed[0]["front_size"] == len(front["front"])

            # a long full run, killed (as a machine going down would) after a checkpoint
            run = api.post(
                "/api/studies/tiny/distill",
                json={"best": "perplexity", "overrides": [f"full.steps={LONG}", "full.checkpoint_every=25", "full.eval_every=0"]},
            ).raise_for_status().json()
            trial = run["trial"]
            assert run["command"].endswith(f"--trial {trial}")
            running = wait_job(api, run["id"], until=lambda j: j["progress"].get("step", 0) >= 60, timeout=180)
            assert running["state"] == "running" and running["progress"]["eta_s"] > 0
            os.kill(running["pid"], signal.SIGKILL)
            assert wait_job(api, run["id"])["state"] == "interrupted"
            refused = api.post("/api/studies/tiny/distill", json={"trial": trial})
            assert refused.status_code == 409 and refused.json()["error"].startswith("resume: ")
        assert server.stop() == 0
    finally:
        server.stop()

    server = Server(studies)  # a restarted server knows every job
    try:
        with httpx.Client(base_url=server.url, timeout=60) as api:
            jobs = {j["id"]: j for j in api.get("/api/jobs").json()}
            assert jobs[job["id"]]["state"] == "completed" and jobs[run["id"]]["state"] == "interrupted"
            assert "search of trial" not in api.get("/", headers={"Accept": "text/html"}).text
            resumed = api.post(f"/api/jobs/{run['id']}/resume", json={}).raise_for_status().json()
            assert "--resume" in resumed["args"] and resumed["trial"] == trial
            done = wait_job(api, resumed["id"])
            assert done["state"] == "completed", done["log"]
            assert any("resuming" in line.lower() for line in done["log"]), done["log"]
            assert done["progress"]["step"] == LONG and done["result"]["trial"] == trial
            card = api.get(f"/api/studies/tiny/trials/{trial}/card").json()
            assert card["export"] == done["result"]["export"] and "distill-nas" in card["markdown"]
            refused = api.post("/api/studies/tiny/distill", json={"trial": trial, "restart": True})
            assert refused.status_code == 409 and refused.json()["error"].startswith("overwrite: ")
            detail = api.get(f"/api/studies/tiny/trials/{trial}").json()
            assert detail["full"]["has_card"] and detail["full"]["metrics"]["perplexity"] > 0

            # a search stopped by the API keeps its completed trials and leaves none running
            more = api.post(
                "/api/searches", json={"spec": "tiny.toml", "trials": 12, "overrides": ["brief.steps=150"]}
            ).raise_for_status().json()
            wait_job(api, more["id"], until=lambda j: j["progress"].get("evaluated", 0) >= 4, timeout=240)
            stopped = api.post(f"/api/jobs/{more['id']}/stop", json={}).raise_for_status().json()
            assert stopped["state"] == "stopped", stopped
        assert server.stop() == 0
    finally:
        server.stop()
    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{studies / 'tiny' / 'optuna.db'}")
    states = [t.state for t in stored.trials]
    assert TrialState.RUNNING not in states
    assert 4 <= states.count(TrialState.COMPLETE) < 12
