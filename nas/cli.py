"""The `nas` command line: search, distill, rank-check, pareto, report, serve. The only place that
prints (the service's jobs run this same code with their output going to the job's log)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from distill.errors import InputError
from distill.tasks import TASKS, format_metric, quality_metrics
from nas.commands import Progress
from nas.study._record import ARCH_SHORT

DEFAULT_SPEC = "studies/demo.toml"
RENAMED = {"fidelity": "rank-check"}
"""commands that were renamed: refused in one line naming the new name"""


def _split(items: list[str]) -> tuple[str, list[str]]:
    specs = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if len(specs) > 1:
        raise InputError(f"give one study spec, got {', '.join(specs)}")
    return (specs[0] if specs else DEFAULT_SPEC), overrides


def _command(sub: Any, name: str, text: str, example: str) -> argparse.ArgumentParser:
    """A subcommand taking a study spec, KEY=VALUE overrides and --storage."""
    c = sub.add_parser(name, help=text)
    c.add_argument(
        "spec",
        nargs="*",
        metavar="SPEC [KEY=VALUE ...]",
        help=f"study spec (default {DEFAULT_SPEC}) and overrides such as {example}",
    )
    c.add_argument("--storage", help="an Optuna storage URL instead of the study's SQLite file")
    return c


class _Refused(Exception):
    """Arguments argparse refused (it has printed the usage and the reason)."""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusal (the usage and one line, exit code 2) comes back to the
    caller as data instead of exiting the process (the service's jobs record it)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _Refused(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nas", description="Search student architectures for knowledge distillation.")
    sub = p.add_subparsers(dest="command", required=True)
    s = _command(sub, "search", "run or continue a study's architecture search", "brief.steps=50")
    s.add_argument("--trials", type=int, help="total number of architectures (overrides study.trials)")
    s.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001)")
    s.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    d = _command(
        sub, "distill", "fully distill one architecture and export it as a Hugging Face model", "full.steps=500"
    )
    pick = d.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", type=int, help="the trial number to distill")
    own = {t.name: [m.name for m in t.metrics if m.kind == "quality" and not m.runtime] for t in TASKS.values()}
    metrics = "; ".join(f"{', '.join(names)} ({name})" for name, names in own.items()) + "; runtime_fp32_/runtime_int8_ each, where measured"
    pick.add_argument(
        "--best", metavar="METRIC", help=f"the front trial best at a quality metric of the task: {metrics}"
    )
    d.add_argument(
        "--max-params", type=float, help="with --best: only trials with at most this many parameters (e.g. 5e6)"
    )
    again = d.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue an unfinished run from its last checkpoint (same settings)"
    )
    again.add_argument("--restart", action="store_true", help="discard an unfinished run's checkpoints and start over")
    d.add_argument("--overwrite", action="store_true", help="replace an earlier export of this trial")
    d.add_argument(
        "--workers", type=int, help="train on this many data-parallel workers, a Ray Train job (overrides full.workers)"
    )
    d.add_argument("--address", help="with --workers: run them on an existing Ray cluster (e.g. auto)")
    d.add_argument("--runtime", choices=["onnx"], help="also export it for ONNX Runtime (onnx/*.onnx), measured beside the teacher")
    d.add_argument("--int8", action="store_true", help="with --runtime: also its int8 model (weights quantized, onnx/*_int8.onnx)")
    f = _command(
        sub,
        "rank-check",
        "fully distill trials across the brief-quality range and measure how well brief runs rank full runs",
        "full.steps=400",
    )
    f.add_argument(
        "--trials", type=int, default=8, help="how many trials to compare (default 8; full runs that exist count)"
    )
    f.add_argument(
        "--stopped",
        type=int,
        default=None,
        help="also fully distill this many trials the multi-fidelity scheduler stopped at a rung, to measure "
        "how often it stopped a better student (default: half of --trials; 0: none)",
    )
    f.add_argument(
        "--overwrite", action="store_true", help="redistill picked trials whose full run had another [full] budget"
    )
    f.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoints of unfinished full runs instead of continuing them",
    )
    for name, text in (("pareto", "print the Pareto front"), ("report", "write the HTML report")):
        c = _command(sub, name, text, "study.name=other")
        if name == "pareto":
            c.add_argument("--json", action="store_true", help="print JSON instead of a table")
        else:
            c.add_argument("--out", type=Path, help="output file (default studies/<name>/report.html)")
            c.add_argument(
                "--color-by",
                choices=("front", "recipe"),
                default="front",
                help="colour the first plot's points by front membership (default) or by recipe ([space.recipe])",
            )
    v = sub.add_parser("serve", help="serve the web app and REST API over a folder of study specs")
    v.add_argument("--studies", type=Path, default=Path("studies"), help="the folder of study specs (default studies)")
    v.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1, this machine only)")
    v.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0 picks a free one)")
    v.add_argument(
        "--token",
        help="a bearer token every request must carry; required to listen beyond loopback "
        "(default: the NAS_TOKEN environment variable)",
    )
    v.add_argument("--address", help="searches started from the service join this Ray cluster (as `nas search --address`)")
    return p


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a command ended, as data: its exit code, its typed result (`nas.commands`), and the
    one-line error of bad input (exit code 2)."""

    code: int
    result: Any = None
    error: str | None = None


def _run(args: argparse.Namespace, progress: Progress | None) -> Outcome:
    from nas import commands
    from nas.spec import load_spec

    if args.command == "serve":
        return Outcome(_serve(args))
    spec_path = next((a for a in args.spec if "=" not in a), DEFAULT_SPEC)  # what an error line names
    try:
        spec_path, overrides = _split(args.spec)
        if getattr(args, "workers", None) is not None:
            overrides = [*overrides, f"full.workers={args.workers}"]
        spec = load_spec(spec_path, overrides)
        if args.storage:
            spec = spec.with_storage(args.storage)
        if args.command == "search":
            found = commands.search(spec, trials=args.trials, address=args.address, report=not args.no_report, on_progress=progress)
            print(commands.pareto(spec).table)
            if found.report:
                print(f"report: {found.report}")
            return Outcome(0, found)
        if args.command == "distill":
            return Outcome(0, _distill(args, spec, progress))
        if args.command == "rank-check":
            return Outcome(0, _rank_check(args, spec, progress))
        if args.command == "pareto":
            front = commands.pareto(spec)
            print(front.json if args.json else front.table)
            return Outcome(0, front)
        written = commands.report(spec, out=args.out, color_by=args.color_by)
        print(f"report: {written.report}")
        return Outcome(0, written)
    except InputError as exc:
        print(f"error: {spec_path}: {exc}", file=sys.stderr)
        return Outcome(2, error=f"{spec_path}: {exc}")


class _StepBar:
    """A full run's progress bar: steps, loss and throughput in the task's unit (tokens/s of
    token blocks, sentences/s of paragraphs); the same figures and an ETA go to `progress`
    (at most twice a second, and at the last step)."""

    def __init__(self, spec: Any, label: str = "", progress: Progress | None = None) -> None:
        task = spec.task
        self.per_step = spec.full.batch_size * task.rate_per_item(spec.data)
        self.rate_name, self.label = task.card.rate, label
        self.bar: Any = None
        self.started: tuple[float, int] | None = None
        self.progress, self.sent = progress, 0.0

    def __call__(self, step: int, total: int, loss: float) -> None:
        from tqdm import tqdm

        if self.bar is None:  # the first step of this run (a resumed run starts part way)
            self.started = (time.perf_counter(), step)
            self.bar = tqdm(
                total=total, initial=step - 1, unit="step", desc=self.label or None, dynamic_ncols=True, file=sys.stderr
            )
        if self.started is not None and step <= self.bar.n:  # workers started again from a checkpoint
            self.started = (time.perf_counter(), step)
        self.bar.update(step - self.bar.n)
        t0, s0 = self.started or (0.0, 0)
        now = time.perf_counter()
        rate = (step - s0) * self.per_step / (now - t0) if step > s0 else None
        if rate is not None:
            self.bar.set_postfix({"loss": f"{loss:.3f}", self.rate_name: f"{rate:,.0f}"}, refresh=False)
        if self.progress is not None and (now - self.sent >= 0.5 or step == total):
            self.sent = now
            per_step_s = (now - t0) / (step - s0) if step > s0 else None
            self.progress(
                {
                    "event": "step",
                    "run": self.label,
                    "step": step,
                    "total": total,
                    "loss": loss,
                    "rate": rate,
                    "rate_unit": self.rate_name,
                    "elapsed_s": round(now - t0, 1),
                    "eta_s": round(per_step_s * (total - step), 1) if per_step_s is not None else None,
                }
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _distill(args: argparse.Namespace, spec: Any, progress: Progress | None) -> Any:
    import shlex

    from nas import commands

    task = spec.task
    if args.int8 and not args.runtime:
        raise InputError("--int8: the int8 model is one of the runtime's files; give --runtime onnx too")
    bar = _StepBar(spec, progress=progress)
    # what makes this export from scratch: the same arguments, without those about an earlier run
    command = shlex.join(["nas", *[a for a in args.argv if a not in ("--resume", "--restart", "--overwrite")]])
    try:
        done = commands.distill(
            spec,
            trial=args.trial,
            best=args.best,
            max_params=args.max_params,
            resume=args.resume,
            restart=args.restart,
            overwrite=args.overwrite,
            command=command,
            on_step=bar,
            address=args.address,
            runtime=(("fp32", "int8") if args.int8 else ("fp32",)) if args.runtime else (),
        )
    finally:
        bar.close()
    m, b, teacher = done.metrics, done.brief, done.teacher_metrics
    for key in (k for k in quality_metrics(task) if k in m):
        print(
            f"{key:>15}: full {format_metric(task, key, m[key])}  brief {format_metric(task, key, b.get(key))}  "
            f"teacher {format_metric(task, key, teacher.get(key))}"
        )
    print(f"{'params':>15}: {m['params']:,} ({m['params'] / teacher.get('params', m['params']):.1%} of the teacher)")
    print(f"exported: {done.export}")
    return done


def _rank_check(args: argparse.Namespace, spec: Any, progress: Progress | None) -> Any:
    import shlex

    from nas import commands

    # What reproduces each export: the same spec, overrides and storage, one trial.
    storage = ["--storage", args.storage] if args.storage else []
    measured = commands.rank_check(
        spec,
        trials=args.trials,
        stopped=args.trials // 2 if args.stopped is None else args.stopped,
        overwrite=args.overwrite,
        restart=args.restart,
        command=lambda n: shlex.join(["nas", "distill", *args.spec, "--trial", str(n), *storage]),
        steps=lambda n: _StepBar(spec, f"trial {n}", progress),
    )
    print(rank_check_table(spec.task, measured.study, measured.measurement))
    return measured


def rank_check_table(task: Any, name: str, result: dict[str, Any]) -> str:
    """The trials compared and, per quality metric, the rank correlations with full quality."""
    from nas.pareto import text_table
    from nas.rank_check import MIN_FOR_INTERVAL

    rows = result["trials"]
    quality = sorted(result["metrics"], key=lambda m: m != result.get("objective"))  # the front's metric first
    lines = [
        f"Rank check of {name}: {len(rows)} trials, brief runs of {', '.join(map(str, result['brief_steps']))} steps "
        "against full runs"
    ]
    head = ["trial", "architecture", *[f"{m} brief -> full" for m in quality[:1]], "full: best/run steps", "non-embedding params"]
    body = [
        [
            str(r["trial"]),
            r[ARCH_SHORT],
            *[
                f"{format_metric(task, m, r['brief'][m])} -> {format_metric(task, m, r['full'][m])}"
                for m in quality[:1]
            ],
            f"{r.get('full_best_step') or r['full_steps']}/{r['full_steps']}",
            f"{r['non_embedding_params']:,}",
        ]
        for r in rows
    ]
    lines += text_table(head, body, rule=False)
    level = f"{result['level']:.0%}"
    lines.append("")
    lines.append(f"{'metric':<16}{'predictor of full quality':<26}{'n':>4}{'Kendall tau':>34}{'Spearman':>34}")

    def cell(c: dict[str, Any], name: str) -> str:
        value, interval, p = c[name], c.get(f"{name}_interval"), c.get(f"{name}_p")
        if value is None:
            return "-"
        low, high = interval if interval else (None, None)
        bounds = f" [{low:+.2f}, {high:+.2f}]" if low is not None and high is not None else ""
        return f"{value:+.2f}{bounds}" + (f" p={p:.3f}" if p is not None else "")

    few = False
    for m, c in result["metrics"].items():
        for label, key in (("brief run", "brief"), ("non-embedding params", "proxy")):
            n = c[key].get("n", len(rows))
            few = few or n < MIN_FOR_INTERVAL
            lines.append(f"{m:<16}{label:<26}{n:>4}{cell(c[key], 'kendall_tau'):>34}{cell(c[key], 'spearman'):>34}")
    lines.append(
        f"[ ]: {level} bootstrap interval over the trials, from {MIN_FOR_INTERVAL} trials"
        + (f" (with fewer, none means much: run with --trials {MIN_FOR_INTERVAL} or more)" if few else "")
        + "; p: the chance that a random order of the trials agrees at least as well (permutation test)"
    )
    regret = result.get("regret")
    if regret and regret["stopped"]:
        m = regret["metric"]
        lines.append("")
        lines.append(f"Trials the scheduler stopped at a rung, fully distilled ({m}, full):")
        for r in result["stopped"]:
            beats = regret["beats"].get(str(r["trial"]), [])
            rung = (r.get("stopped_at") or {}).get("step", "?")
            what = f"beats completed trial(s) {', '.join(map(str, beats))}, at least as large" if beats else "beats no completed trial at least as large"
            lines.append(
                f"  trial {r['trial']} ({r[ARCH_SHORT]}, {r['non_embedding_params']:,} params, stopped at step {rung}): "
                f"{format_metric(task, m, r['full'][m])}: {what}"
            )
        lines.append(
            f"Scheduler's regret: {regret['regretted']} of {regret['stopped']} stopped trials would have beaten a completed "
            "trial of at least their size after the full run."
        )
    pick = result.get("pick")
    if pick:
        m = pick["metric"]
        lines.append("")
        lines.append(
            f"The front's best {m} (trial {pick['trial']}, what `nas distill --best {m}` takes) ends at "
            f"{format_metric(task, m, pick['full'])}; the best full run compared (trial {pick['best_trial']}) at "
            f"{format_metric(task, m, pick['best_full'])}: {pick['gap']:.1%} worse."
            if pick["trial"] != pick["best_trial"]
            else f"The front's best {m} (trial {pick['trial']}, what `nas distill --best {m}` takes) is also the best full run compared."
        )
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    import os

    from nas.service import serve

    token = args.token or os.environ.get("NAS_TOKEN") or None
    try:
        serve(
            args.studies,
            host=args.host,
            port=args.port,
            token=token,
            address=args.address,
            on_ready=lambda url: print(f"serving {args.studies} at {url} (the API at {url}docs); Ctrl-C stops", flush=True),
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on once it has shut down
        pass
    print("stopped serving", flush=True)
    return 0


def _quiet_libraries() -> None:
    """The terminal shows our progress; the libraries' own bars and notices go."""
    import warnings

    import datasets
    import optuna
    import transformers

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None, progress: Progress | None = None) -> int:
    """Run the `nas` command line (`argv`: its arguments, default sys.argv's); `progress`
    receives the run's progress figures as they come. Returns the exit code."""
    return run(argv, progress).code


def run(argv: list[str] | None = None, progress: Progress | None = None) -> Outcome:
    """`main`, with how it ended as data: the command's typed result or its error line (the
    service's jobs record these)."""
    words = list(sys.argv[1:] if argv is None else argv)
    renamed = RENAMED.get(words[0]) if words else None
    parser = _parser()
    try:
        args, extra = parser.parse_known_args([renamed, *words[1:]] if renamed else words)  # overrides may follow options
        unknown = [e for e in extra if e.startswith("-") or "=" not in e]
        if unknown or (args.command == "serve" and extra):
            parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    except _Refused as exc:
        return Outcome(2, error=str(exc))
    args.argv = words  # what reproduces this run
    if args.command != "serve":
        args.spec = [*args.spec, *extra]
    if renamed:
        spec = next((a for a in args.spec if "=" not in a), DEFAULT_SPEC)
        error = f"{spec}: {words[0]}: the command is now {renamed} (nas {renamed}, same arguments)"
        print(f"error: {error}", file=sys.stderr)
        return Outcome(2, error=error)
    _quiet_libraries()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    for name in ("nas", "distill"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return _run(args, progress)
    except KeyboardInterrupt:
        print("interrupted; completed trials are kept in the study's storage", file=sys.stderr)
        return Outcome(130, error="interrupted")


if __name__ == "__main__":
    sys.exit(main())
