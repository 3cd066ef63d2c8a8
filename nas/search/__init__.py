"""The search: the driver (`run_search`), one trial's work (`trial`), the samplers
(`sampling`), the multi-fidelity scheduler (`scheduler`), and the Ray Tune glue (`_ray`,
imported only once a search runs). The driver's names load on first use, so that the spec can
read the samplers' names without importing the driver that reads specs."""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_ROUNDS", "check_resources", "run_search", "stamp_study", "start_ray", "trial_plan"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from nas.search import _driver

        return getattr(_driver, name)
    raise AttributeError(f"module 'nas.search' has no attribute {name!r}")
