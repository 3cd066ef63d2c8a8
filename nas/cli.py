"""The `nas` command line: search, distill, fidelity, pareto, report, serve. The only place that
prints (the service's jobs run this same code with their output going to the job's log)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.errors import InputError
from distill.tasks import TASKS, format_metric, quality_metrics

DEFAULT_SPEC = "studies/demo.toml"

Progress = Callable[[dict[str, Any]], None]
"""where a run's progress goes besides the terminal: a dict per finished trial (`event` "trial"),
per full-run step ("step") and per export ("exported")"""


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nas", description="Search student architectures for knowledge distillation.")
    sub = p.add_subparsers(dest="command", required=True)
    s = _command(sub, "search", "run or continue a study's architecture search", "distill.steps=50")
    s.add_argument("--trials", type=int, help="total number of architectures (overrides study.trials)")
    s.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001)")
    s.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    d = _command(
        sub, "distill", "fully distill one architecture and export it as a Hugging Face model", "full.steps=500"
    )
    pick = d.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", type=int, help="the trial number to distill")
    metrics = "; ".join(f"{', '.join(quality_metrics(t))} ({t.name})" for t in TASKS.values())
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
    f = _command(
        sub,
        "fidelity",
        "fully distill trials across the brief-quality range and measure how well brief runs rank full runs",
        "full.steps=400",
    )
    f.add_argument(
        "--trials", type=int, default=8, help="how many trials to compare (default 8; full runs that exist count)"
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


def _run(args: argparse.Namespace, progress: Progress | None) -> int:
    from nas.spec import load_spec

    if args.command == "serve":
        return _serve(args)
    spec_path, overrides = _split(args.spec)
    try:
        spec = load_spec(spec_path, overrides)
        if args.storage:
            spec = spec.with_storage(args.storage)
        if args.command == "search":
            if args.trials is not None and args.trials < 1:
                raise InputError(f"--trials: must be >= 1, got {args.trials}")
            from nas.pareto import front_table
            from nas.report import write_report
            from nas.search import run_search
            from nas.study import distinct_complete

            study = run_search(spec, trials=args.trials, address=args.address, on_progress=progress)
            print(front_table(study))
            if not args.no_report and distinct_complete(study):
                print(f"report: {write_report(study, spec.out_dir / 'report.html')}")
            return 0
        from nas.study import load_existing_study

        study = load_existing_study(spec)
        if args.command == "distill":
            return _distill(args, spec, study, progress)
        if args.command == "fidelity":
            return _fidelity(args, spec, study, progress)
        if args.command == "pareto":
            from nas.pareto import front_json, front_table

            print(front_json(study) if args.json else front_table(study))
        else:
            from nas.report import write_report

            try:
                out = write_report(study, args.out or spec.out_dir / "report.html", args.color_by)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            print(f"report: {out}")
        return 0
    except InputError as exc:
        print(f"error: {spec_path}: {exc}", file=sys.stderr)
        return 2


class _StepBar:
    """A full run's progress bar: steps, loss and throughput in the task's unit (tokens/s of
    token blocks, sentences/s of paragraphs); the same figures and an ETA go to `progress`
    (at most twice a second, and at the last step)."""

    def __init__(self, spec: Any, label: str = "", progress: Progress | None = None) -> None:
        task = spec.task
        self.per_step = spec.full.batch_size * (spec.data.block_length if task.card.rate_in_tokens else 1)
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
        self.bar.update(1)
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


def _distill(args: argparse.Namespace, spec: Any, study: Any, progress: Progress | None) -> int:
    import shlex

    from nas.full import full_distill, select_trial
    from nas.study import StudyRecord

    task = spec.task
    quality = quality_metrics(task)
    trial = select_trial(study, number=args.trial, best=args.best, max_params=args.max_params, metrics=quality)
    bar = _StepBar(spec, progress=progress)
    # what makes this export from scratch: the same arguments, without those about an earlier run
    command = shlex.join(["nas", *[a for a in args.argv if a not in ("--resume", "--restart", "--overwrite")]])
    record = full_distill(
        spec,
        trial,
        study,
        resume=args.resume,
        restart=args.restart,
        overwrite=args.overwrite,
        command=command,
        on_step=bar,
    )
    bar.close()
    m, b = record["metrics"], record["brief"]
    teacher = StudyRecord(study).teacher_metrics
    for key in quality:
        print(
            f"{key:>15}: full {format_metric(task, key, m[key])}  brief {format_metric(task, key, b.get(key))}  "
            f"teacher {format_metric(task, key, teacher.get(key))}"
        )
    print(f"{'params':>15}: {m['params']:,} ({m['params'] / teacher.get('params', m['params']):.1%} of the teacher)")
    print(f"exported: {record['export']}")
    if progress is not None:
        progress({"event": "exported", "trial": trial.number, "export": record["export"], "command": command})
    return 0


def _fidelity(args: argparse.Namespace, spec: Any, study: Any, progress: Progress | None) -> int:
    import shlex

    from nas.fidelity import measure
    from nas.full import full_distill, has_checkpoint

    if args.trials < 3:
        raise InputError(f"--trials: at least 3 trials are needed to rank, got {args.trials}")

    def distill_one(trial: Any) -> dict[str, Any]:
        bar = _StepBar(spec, f"trial {trial.number}", progress)
        # What reproduces this export: the same spec, overrides and storage, one trial.
        storage = ["--storage", args.storage] if args.storage else []
        command = shlex.join(["nas", "distill", *args.spec, "--trial", str(trial.number), *storage])
        resume = has_checkpoint(spec, trial.number) and not args.restart  # a killed run goes on
        try:
            return full_distill(
                spec,
                trial,
                study,
                resume=resume,
                restart=args.restart,
                overwrite=args.overwrite,
                command=command,
                on_step=bar,
            )
        finally:
            bar.close()

    result = measure(spec, study, args.trials, distill_one=distill_one, overwrite=args.overwrite)
    print(fidelity_table(spec.task, study.study_name, result))
    return 0


def fidelity_table(task: Any, name: str, result: dict[str, Any]) -> str:
    """The trials compared and, per quality metric, the rank correlations with full quality."""
    from nas.pareto import text_table

    rows = result["trials"]
    quality = sorted(result["metrics"], key=lambda m: m != result.get("objective"))  # the front's metric first
    lines = [
        f"Fidelity of {name}: {len(rows)} trials, brief runs of {', '.join(map(str, result['brief_steps']))} steps "
        "against full runs"
    ]
    head = ["trial", "architecture", *[f"{m} brief -> full" for m in quality[:1]], "full: best/run steps", "non-embedding params"]
    body = [
        [
            str(r["trial"]),
            r["arch_short"],
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
    lines.append(
        f"{'metric':<16}{'predictor of full quality':<30}{'Kendall tau [' + level + ']':>26}{'Spearman [' + level + ']':>26}"
    )

    def cell(c: dict[str, Any], name: str) -> str:
        low, high = c[f"{name}_interval"]
        value = c[name]
        interval = f"[{low:+.2f}, {high:+.2f}]" if low is not None and high is not None else "[-]"
        return f"{value:+.2f} {interval}" if value is not None else "-"

    for m, c in result["metrics"].items():
        for label, key in (("brief run", "brief"), ("non-embedding params", "proxy")):
            lines.append(f"{m:<16}{label:<30}{cell(c[key], 'kendall_tau'):>26}{cell(c[key], 'spearman'):>26}")
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
    receives the run's progress figures as they come."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # KEY=VALUE overrides may follow the options
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what reproduces this run
    if args.command != "serve":
        args.spec = [*args.spec, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_libraries()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    for name in ("nas", "distill"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return _run(args, progress)
    except KeyboardInterrupt:
        print("interrupted; completed trials are kept in the study's storage", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
