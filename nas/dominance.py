"""Pareto dominance on plain arrays: non-dominated sorting, crowding distance and hypervolume.
Shared by the front, the multi-fidelity scheduler and the sampler benchmark. Every function
takes values to minimize (negate a metric to maximize first)."""

from __future__ import annotations

import numpy as np

from nas import _compat


def to_minimize(values: np.ndarray | list, directions: list[str]) -> np.ndarray:
    """(N, M) values with each "max" column negated, so that lower is better everywhere."""
    signs = np.array([-1.0 if d in ("max", "maximize") else 1.0 for d in directions])
    return np.asarray(values, dtype=float).reshape(-1, len(directions)) * signs


def reference_point(points: np.ndarray | list) -> np.ndarray:
    """The hypervolume's reference point: 10 % beyond the worst value of each objective."""
    worst = np.asarray(points, dtype=float).max(axis=0)
    return worst + 0.1 * np.abs(worst)


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """(N,) the front each point is on: 0 for the non-dominated, 1 for those dominated only by
    front 0, and so on (Deb et al., 2002)."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    # dominated_by[i, j]: j dominates i
    le = np.all(points[None, :, :] <= points[:, None, :], axis=2)
    lt = np.any(points[None, :, :] < points[:, None, :], axis=2)
    dominated_by = le & lt
    ranks = np.full(n, -1)
    left = np.ones(n, dtype=bool)
    rank = 0
    while left.any():
        front = left & ~(dominated_by & left[None, :]).any(axis=1)
        ranks[front] = rank
        left &= ~front
        rank += 1
    return ranks


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """(N,) NSGA-II's crowding distance within one front: the extremes get infinity."""
    points = np.asarray(points, dtype=float)
    n, m = points.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        span = points[order[-1], j] - points[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (points[order[2:], j] - points[order[:-2], j]) / span
    return dist


def pareto_order(points: np.ndarray) -> np.ndarray:
    """Indices of `points` best first: by front, then by crowding distance within a front
    (the order NSGA-II and MO-ASHA select in)."""
    points = np.asarray(points, dtype=float)
    ranks = nondominated_ranks(points)
    crowd = np.zeros(len(points))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(points[members])
    return np.lexsort((-crowd, ranks))


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """The volume dominated by `points` and bounded by `reference`, by Optuna's own algorithm
    (exact in any number of objectives); points beyond the reference count for nothing."""
    points = np.asarray(points, dtype=float)
    reference = np.asarray(reference, dtype=float)
    points = points[np.all(points < reference, axis=1)]
    if not len(points):
        return 0.0
    return _compat.hypervolume(points, reference)
