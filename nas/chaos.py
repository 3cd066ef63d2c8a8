"""Kill runs at random moments and check that the study survives: `python -m nas.chaos`.

The search driver is SIGKILLed at random moments (while the teacher's outputs are cached,
while Ray starts, while trials run), restarted after each kill, then left to finish; a full
distillation is killed the same way (while it trains and writes checkpoints, while it exports)
and resumed. After every kill and at the end the study is checked: no published teacher cache
is half-written, no trial completed before a kill is lost; at the end the study holds exactly
the asked number of distinct architectures, none trained twice, none left RUNNING, and the
distilled trial's export is recorded, whole and loadable.

    python -m nas.chaos studies/demo.toml --kills 6 --trials 4
    python -m nas.chaos studies/demo.toml --distill 0 --kills 4 full.steps=200

Run it on a copy of a study (e.g. `study.name=chaos`): it kills real runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SEARCH_PHASES = (
    ("the teacher cache", "", "teacher outputs cached in", 0.05),
    ("Ray's start", "starting Ray", "started trial", 8.0),
    ("running trials", "started trial", None, 4.0),
    ("a trial just completed", "architectures done", None, 1.0),
)
"""(phase, the log line that starts it, the line that ends it, at most how many seconds after
its start a kill lands)"""
DISTILL_PHASES = (
    ("training and checkpointing", "full distillation of trial", "exporting trial", 6.0),
    ("a checkpoint write", "", "exporting trial", 0.0),
    ("the export", "exporting trial", None, 0.3),
)


@dataclasses.dataclass
class Kill:
    phase: str
    after_s: float
    landed: str = ""


class Run:
    """A `nas` subprocess whose log lines are read as they come. Only it is killed: the Ray
    processes a local search starts end with it (Ray ties their lives to the driver's)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nas", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> bool:
        """Whether a line with `text` comes before the run ends or `timeout` passes."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    return False
                continue
            self.log.append(line)
            if text in line:
                return True
        return False

    def kill(self) -> bool:
        """SIGKILL the run; whether it was still running."""
        alive = self.proc.poll() is None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return alive

    def finish(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -1
        self.wait_for("\0", 1.0)
        return self.proc.returncode


def kill_at(
    run: Run,
    phases: tuple[tuple[str, str, str | None, float], ...],
    phase: str,
    rng: random.Random,
    inside: Callable[[], bool] | None = None,
) -> Kill:
    """Wait for `phase` to start, kill the run at a random moment within it, say where it
    landed. With `inside` (whether the run is in the phase now, read from its files: a
    `.partial` being written), the phase starts when `inside()` first holds, whatever the log."""
    _, start, end, window = next(p for p in phases if p[0] == phase)
    started, delay = time.time(), rng.uniform(0.0, window)
    if inside is not None:
        while not inside() and run.proc.poll() is None and time.time() - started < 900:
            time.sleep(0.0002)  # a checkpoint is written in milliseconds
        started = time.time()
        while time.time() - started < delay and inside():
            time.sleep(0.0002)
        ended = not inside()
    elif not run.wait_for(start, timeout=900):
        run.kill()
        last = run.log[-1].strip() if run.log else ""
        return Kill(phase, 0.0, f"the run ended before the phase: {last[:200]}")
    else:
        started = time.time()
        ended = run.wait_for(end or "\0", timeout=delay)  # the log is read meanwhile
    if not run.kill():
        return Kill(phase, time.time() - started, "the run had ended")
    return Kill(phase, time.time() - started, "as the phase ended" if ended else "within the phase")


def check_caches(out_dir: Path) -> list[str]:
    """Every published teacher cache whole: its description, and each array it lists readable
    with the shape it lists."""
    from distill.cache import TEACHER_METRICS

    problems = []
    for folder in sorted((out_dir / "cache").glob("*")):
        if folder.name.endswith(".partial"):
            continue
        try:
            meta = json.loads((folder / "meta.json").read_text())
            assert TEACHER_METRICS in meta, "no teacher metrics"
            for split, arrays in meta["outputs"].items():
                for name, spec in arrays.items():
                    arr = np.load(folder / f"{split}_{name}.npy", mmap_mode="r")
                    assert list(arr.shape[1:]) == spec["shape"], f"{split}_{name} has shape {arr.shape}"
        except (OSError, ValueError, AssertionError, KeyError) as exc:
            problems.append(f"cache {folder.name} is not whole: {exc}")
    return problems


def trial_states(spec: Any) -> dict[int, tuple[str, Any]]:
    import optuna

    from nas.study import open_storage

    try:
        study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url))
    except KeyError:
        return {}
    return {t.number: (t.state.name, t.values) for t in study.get_trials(deepcopy=False)}


def lost(before: dict[int, tuple[str, Any]], after: dict[int, tuple[str, Any]]) -> list[str]:
    return [
        f"trial {n} was COMPLETE with {v} and is now {after.get(n)}"
        for n, (state, v) in before.items()
        if state == "COMPLETE" and after.get(n) != (state, v)
    ]


def search_chaos(spec_args: list[str], spec: Any, kills: int, rng: random.Random, say: Any) -> list[str]:
    """Kill the search `kills` times, restart it after each, let it finish; the problems found."""
    from nas.study import TrialRecord, distinct_evaluated, load_existing_study

    problems: list[str] = []
    plan = ["the teacher cache", "Ray's start"] + ["a trial just completed", "running trials"] * kills
    seen: dict[int, tuple[str, Any]] = {}
    landed: list[Kill] = []
    for attempt in range(2 * kills):
        if len(landed) == kills:
            break
        phase = plan[len(landed)]
        if phase == "the teacher cache" and any(not p.name.endswith(".partial") for p in (spec.out_dir / "cache").glob("*")):
            phase = "running trials"  # cached already: nothing to kill there
        run = Run(["search", *spec_args, "--no-report"])
        building = lambda: any((spec.out_dir / "cache").glob("*.partial"))  # noqa: E731 - see distill.files
        kill = kill_at(run, SEARCH_PHASES, phase, rng, building if phase == "the teacher cache" else None)
        now = trial_states(spec)
        problems += check_caches(spec.out_dir) + lost(seen, now)
        seen = {**seen, **{n: s for n, s in now.items() if s[0] == "COMPLETE"}}
        complete = sum(s == "COMPLETE" for s, _ in now.values())
        if kill.landed.startswith(("within", "as the")):
            landed.append(kill)
        say(f"kill {len(landed)}/{kills} (try {attempt + 1}): {kill.phase}, {kill.after_s:.2f} s in ({kill.landed}); "
            f"{complete} trials complete")
    if len(landed) < kills:
        problems.append(f"only {len(landed)} of {kills} kills landed in a run (give the search more trials or steps)")
    run = Run(["search", *spec_args, "--no-report"])
    code = run.finish(timeout=3600)
    if code != 0:
        problems.append(f"the last search exited with {code}: {''.join(run.log[-5:])}")
    now = trial_states(spec)
    problems += check_caches(spec.out_dir) + lost(seen, now)
    study = load_existing_study(spec)
    evaluated = distinct_evaluated(study)
    if len(evaluated) != spec.study.trials:
        problems.append(f"{len(evaluated)} distinct architectures evaluated, {spec.study.trials} asked")
    running = [n for n, (s, _) in now.items() if s == "RUNNING"]
    if running:
        problems.append(f"trials left RUNNING: {running}")
    trained = [json.dumps([TrialRecord(t).arch, TrialRecord(t).recipe], sort_keys=True) for t in evaluated]
    if len(set(trained)) != len(trained):
        problems.append("an architecture was trained twice")
    say(f"search: {len(evaluated)}/{spec.study.trials} distinct architectures, {len(now)} trials in all")
    return problems


def distill_chaos(spec_args: list[str], spec: Any, number: int, kills: int, rng: random.Random, say: Any) -> list[str]:
    """Kill `nas distill --trial number` `kills` times, resume it after each; the problems found."""
    import optuna

    from distill.loop import LAST_CHECKPOINT
    from nas.full import EXPORT_RECORD, checkpoint_dir, export_dir
    from nas.study import distilled_records, open_storage

    problems: list[str] = []
    args = ["distill", *spec_args, "--trial", str(number), "--overwrite"]
    plan = ["a checkpoint write"] + ["training and checkpointing"] * max(0, kills - 2) + ["the export"]
    landed: list[Kill] = []
    for attempt in range(2 * kills):
        if len(landed) == kills:
            break
        run = Run([*args, *(["--resume"] if attempt else [])])
        phase = plan[len(landed)]
        writing = checkpoint_dir(spec, number) / f".{LAST_CHECKPOINT}.partial"  # see distill.files
        kill = kill_at(run, DISTILL_PHASES, phase, rng, writing.exists if phase == "a checkpoint write" else None)
        torn = [p.name for p in checkpoint_dir(spec, number).glob(".*.partial")]
        if kill.landed.startswith(("within", "as the")):
            landed.append(kill)
        say(f"kill {len(landed)}/{kills} (try {attempt + 1}): {kill.phase}, {kill.after_s:.2f} s in ({kill.landed})"
            + (f"; a checkpoint was being written ({', '.join(torn)})" if torn else ""))
    if len(landed) < kills:
        problems.append(f"only {len(landed)} of {kills} kills landed in a run (give the run more steps)")
    run = Run([*args, "--resume"])
    code = run.finish(timeout=3600)
    if code != 0:
        problems.append(f"the last distillation exited with {code}: {''.join(run.log[-5:])}")
        return problems
    study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url))
    record = distilled_records(study).get(str(number))
    out = export_dir(spec, number)
    exported = json.loads((out / EXPORT_RECORD).read_text())
    if record is None or record.get("finished") != exported.get("finished"):
        problems.append("the study's record is not the export's")
    if checkpoint_dir(spec, number).exists():
        problems.append("the finished run's checkpoints were left behind")
    weights = sorted(out.rglob("*.safetensors"))
    try:
        from safetensors.torch import load_file

        assert weights and (out / "README.md").exists(), "no weights or no model card"
        for file in weights:
            load_file(file)
    except Exception as exc:  # noqa: BLE001 - reported
        problems.append(f"the export is not whole: {exc}")
    say(f"distill: trial {number} exported to {out}")
    return problems


def main(argv: list[str] | None = None) -> int:
    from nas.cli import DEFAULT_SPEC, _split
    from nas.spec import load_spec

    p = argparse.ArgumentParser(prog="python -m nas.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", nargs="*", metavar="SPEC [KEY=VALUE ...]", help=f"study spec (default {DEFAULT_SPEC}) and overrides")
    p.add_argument("--kills", type=int, default=6, help="how many times to kill each run (default 6)")
    p.add_argument("--trials", type=int, help="architectures to search (overrides study.trials)")
    p.add_argument("--distill", type=int, metavar="TRIAL", help="kill and resume `nas distill --trial TRIAL` instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args, extra = p.parse_known_args(argv)  # KEY=VALUE overrides may follow the options
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    path, overrides = _split([*args.spec, *extra])
    if args.trials is not None:
        overrides.append(f"study.trials={args.trials}")
    spec = load_spec(path, overrides)
    rng = random.Random(args.seed)
    spec_args = [path, *overrides]
    if args.distill is None:
        problems = search_chaos(spec_args, spec, args.kills, rng, print)
    else:
        problems = distill_chaos(spec_args, spec, args.distill, args.kills, rng, print)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("the study survived every kill" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
