"""One writer per study: a second search is refused and the first is unharmed; the storage
lease that guards a study other machines share is refused while its holder lives and taken
over when it is gone."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from distill.files import Busy
from nas.spec import load_spec
from nas.study import distinct_complete, locks
from tests.conftest import write_spec
from tests.postgres import postgres_url  # noqa: F401 - a fixture


def _nas(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "nas", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow  # two real searches
def test_a_second_search_is_refused_and_the_first_is_unharmed(tmp_path, teacher_dirs):
    path = write_spec(tmp_path, teacher_dirs["gpt2"])
    spec = load_spec(path)
    first = _nas("search", str(path), "--no-report", "brief.steps=150")
    holder = spec.out_dir / "locks" / "search.lock.holder"
    deadline = time.time() + 120
    while not holder.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert holder.exists(), first.communicate()[1][-3000:]
    second = _nas("search", str(path), "--no-report")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"study.name: study 'tiny' is being searched by pid {first.pid} on " in lines[0]
    assert "since " in lines[0] and "wait for it to end or stop it" in lines[0]
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    assert len(distinct_complete(study)) == 3
    assert not study.get_trials(states=(TrialState.FAIL, TrialState.RUNNING))
    assert not holder.exists()


HOLD = """
import sys, time, optuna
from nas.study.locks import lease
study = optuna.load_study(study_name="leased", storage=sys.argv[1])
with lease(study, "search"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_storage_lease_is_refused_while_its_holder_lives(postgres_url):  # noqa: F811
    study = optuna.create_study(study_name="leased", storage=postgres_url)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, postgres_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"pid {holder.pid} on "):
            with locks.lease(study, "search"):
                pass
        with locks.lease(study, "distill-3"):  # another role is another lease
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Killed on this machine: taken over at once, without waiting for the lease to age.
    with locks.lease(study, "search"):
        assert study.user_attrs[locks.lease_key("search")]["pid"] == os.getpid()
    assert study.user_attrs[locks.lease_key("search")] == {}  # released


def test_a_lease_held_elsewhere_is_taken_over_only_once_it_ages(postgres_url, monkeypatch):  # noqa: F811
    study = optuna.create_study(study_name="elsewhere", storage=postgres_url)
    other = {"pid": 1, "host": "another-machine", "since": time.time(), "command": "nas search", "token": "x"}
    study.set_user_attr(locks.lease_key("search"), {**other, "beat": time.time()})
    with pytest.raises(Busy, match="pid 1 on another-machine"):
        with locks.lease(study, "search"):
            pass
    study.set_user_attr(locks.lease_key("search"), {**other, "beat": time.time() - locks.LEASE_S - 1})
    monkeypatch.setattr(locks, "LEASE_S", 0.4)  # renewed every 0.1 s while held
    with locks.lease(study, "search"):
        beat = study.user_attrs[locks.lease_key("search")]["beat"]
        time.sleep(0.5)
        assert study.user_attrs[locks.lease_key("search")]["beat"] > beat


def test_a_repeated_architecture_stops_waiting_for_its_twin(tmp_path):
    from nas.search._ray import wait_for_twin
    from nas.search.trial import TrialPlan

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="twins", storage=url)
    running, failed = study.ask(), study.ask()
    study.tell(failed, state=TrialState.FAIL)
    plan = TrialPlan("causal-lm", None, None, None, url, "twins", ("perplexity",), 0, 1, 0, twin_wait_s=0.3)
    with pytest.raises(RuntimeError, match=f"repeats trial {failed.number}, which ended as FAIL"):
        wait_for_twin(plan, failed.number, poll_s=0.05)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=f"repeats trial {running.number}, still running after 0 s"):
        wait_for_twin(plan, running.number, poll_s=0.05)
    assert time.monotonic() - started < 5


def test_a_cluster_search_needs_a_storage_every_node_can_write(tmp_path, teacher_dirs):
    path = write_spec(tmp_path, teacher_dirs["gpt2"])
    proc = _nas("search", str(path), "--address", "127.0.0.1:6379")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "--storage: a search on a Ray cluster (--address) needs a storage that every node can write" in err
    assert not (tmp_path / "tiny").exists()  # refused before anything was written


@pytest.mark.usefixtures("ray_local")
def test_a_journal_file_storage_holds_a_study_and_its_lease(tmp_path, teacher_dirs):
    from nas.search import run_search
    from nas.study import open_storage

    journal = f"journal:///{tmp_path / 'study.log'}"
    spec = load_spec(write_spec(tmp_path, teacher_dirs["gpt2"]), ["study.trials=2"]).with_storage(journal)
    run_search(spec)
    study = optuna.load_study(study_name=spec.name, storage=open_storage(journal))
    assert len(distinct_complete(study)) == 2
    assert study.user_attrs[locks.lease_key("search")] == {}  # held during the search, released after
    assert not (spec.out_dir / "optuna.db").exists()
