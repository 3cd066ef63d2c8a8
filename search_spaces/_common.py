"""What every search space shares: the checks of its bounds, each raising
ValueError("<key>: ...") so that a spec error names the `space.<key>` it comes from, and the
plain-dict round trip and derived widths of its architectures."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


def sample_width(trial: Any, space: Any) -> dict[str, Any]:
    """heads, head_dim and ffn_ratio from a space's choices (the same parameter names in every space)."""
    return {
        "heads": trial.suggest_categorical("heads", list(space.heads)),
        "head_dim": trial.suggest_categorical("head_dim", list(space.head_dim)),
        "ffn_ratio": trial.suggest_categorical("ffn_ratio", [float(r) for r in space.ffn_ratio]),
    }


def sample_init(trial: Any, space: Any) -> dict[str, Any]:
    """How the student starts; the layer pick only matters, and is only sampled, for a slice of the teacher."""
    init = trial.suggest_categorical("init", list(space.init))
    pick = trial.suggest_categorical("layer_pick", list(space.layer_pick)) if init == "teacher" else "even"
    return {"init": init, "layer_pick": pick}


class WidthArch:
    """Mixin of the architecture dataclasses: width is heads x head_dim, the FFN a ratio of it,
    and the architecture a plain dict (what Optuna samples and JSON stores)."""

    heads: int
    head_dim: int
    ffn_ratio: float

    @classmethod
    def from_dict(cls, arch: dict[str, Any]) -> Any:
        return cls(**{f.name: arch[f.name] for f in dataclasses.fields(cls) if f.name in arch})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def ffn(self) -> int:
        return max(1, round(self.ffn_ratio * self.hidden))


def as_choices(space: Any, names: Iterable[str]) -> None:
    """Freeze the choice lists `names` of a frozen dataclass `space` into tuples; none may be empty."""
    for name in names:
        object.__setattr__(space, name, tuple(getattr(space, name)))
        if not getattr(space, name):
            raise ValueError(f"{name}: needs at least one choice")


def check_range(name: str, value: Any) -> tuple[int, int]:
    """A [min, max] pair of integers with 1 <= min <= max."""
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value) or not 1 <= value[0] <= value[1]:
        raise ValueError(f"{name}: must be [min, max] integers with 1 <= min <= max, got {list(value)}")
    return value


def check_positive_ints(name: str, values: Iterable[Any]) -> None:
    values = list(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name}: choices must be positive integers, got {values}")


def check_positive_numbers(name: str, values: Iterable[Any]) -> None:
    values = list(values)
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in values):
        raise ValueError(f"{name}: choices must be positive numbers, got {values}")


def check_bools(name: str, values: Iterable[Any]) -> None:
    values = list(values)
    if not all(isinstance(t, bool) for t in values):
        raise ValueError(f"{name}: choices must be true/false, got {values}")


def check_allowed(name: str, values: Iterable[Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown choice {bad[0]!r}; allowed: {', '.join(allowed)}")
