"""The `nas` command line: search, pareto, report. The only place that prints."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from distill.errors import InputError

DEFAULT_SPEC = "studies/demo-lm.toml"


def _split(items: list[str]) -> tuple[str, list[str]]:
    specs = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if len(specs) > 1:
        raise InputError(f"give one study spec, got {', '.join(specs)}")
    return (specs[0] if specs else DEFAULT_SPEC), overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nas", description="Search student architectures for knowledge distillation.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="run or continue a study's architecture search")
    s.add_argument(
        "spec",
        nargs="*",
        metavar="SPEC [KEY=VALUE ...]",
        help=f"study spec (default {DEFAULT_SPEC}) and overrides such as distill.steps=50",
    )
    s.add_argument("--trials", type=int, help="total number of architectures (overrides study.trials)")
    s.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001)")
    s.add_argument("--storage", help="an Optuna storage URL instead of the study's SQLite file")
    s.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    for name, text in (("pareto", "print the Pareto front"), ("report", "write the HTML report")):
        c = sub.add_parser(name, help=text)
        c.add_argument("spec", nargs="*", metavar="SPEC [KEY=VALUE ...]", help=f"study spec (default {DEFAULT_SPEC})")
        c.add_argument("--storage", help="an Optuna storage URL instead of the study's SQLite file")
        if name == "pareto":
            c.add_argument("--json", action="store_true", help="print JSON instead of a table")
        else:
            c.add_argument("--out", type=Path, help="output file (default studies/<name>/report.html)")
    return p


def _run(args: argparse.Namespace) -> int:
    from nas.spec import load_spec

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
            from nas.search import distinct_complete, run_search

            study = run_search(spec, trials=args.trials, address=args.address)
            print(front_table(study))
            if not args.no_report and distinct_complete(study):
                print(f"report: {write_report(study, spec.out_dir / 'report.html')}")
            return 0
        from nas.search import load_existing_study

        study = load_existing_study(spec)
        if args.command == "pareto":
            from nas.pareto import front_json, front_table

            print(front_json(study) if args.json else front_table(study))
        else:
            from nas.report import write_report

            try:
                out = write_report(study, args.out or spec.out_dir / "report.html")
            except ValueError as exc:
                raise InputError(str(exc)) from None
            print(f"report: {out}")
        return 0
    except InputError as exc:
        print(f"error: {spec_path}: {exc}", file=sys.stderr)
        return 2


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    for name in ("nas", "distill"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted; completed trials are kept in the study's storage", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
