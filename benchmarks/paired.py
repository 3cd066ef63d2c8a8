"""Paired comparisons of the benchmarks: runs of two settings on the same seeds."""

from __future__ import annotations

import math
import statistics


def interval(diffs: list[float]) -> tuple[float, float]:
    """The mean of paired differences and the half-width of its 95 % interval (Student's t
    over the pairs; infinite for one pair)."""
    from scipy import stats

    n = len(diffs)
    if n < 2:
        return diffs[0], math.inf
    return statistics.mean(diffs), float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)


def fmt(mean: float, half: float, digits: int = 2) -> str:
    """`+0.12 ± 0.34`."""
    return f"{mean:+.{digits}f} ± {half:.{digits}f}"
