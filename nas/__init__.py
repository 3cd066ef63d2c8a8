"""The search service: study specs, trials, the Ray Tune + Optuna search, Pareto front, report."""

from nas.spec import StudySpec, load_spec

__all__ = ["StudySpec", "load_spec"]
