"""What every search space shares: the checks of its bounds, each raising
ValueError("<key>: ...") so that a spec error names the `space.<key>` it comes from, and the
plain-dict round trip and derived widths of its architectures."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

RUNTIME_MULTIPLES = {"llama.cpp": 256, "mlx": 64}
"""The block an edge runtime quantizes a weight's rows in: llama.cpp's k-quants take rows in
blocks of 256 (other rows fall back to larger formats), MLX quantizes in groups of 64."""

def multiple_of(value: Any) -> int:
    """`[space] multiple_of` as a number (a runtime's name resolved); ValueError naming the key."""
    if isinstance(value, str):
        if value not in RUNTIME_MULTIPLES:
            allowed = ", ".join(RUNTIME_MULTIPLES)
            raise ValueError(f"multiple_of: unknown runtime {value!r}; give a positive integer or one of {allowed}")
        return RUNTIME_MULTIPLES[value]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"multiple_of: must be a positive integer or a runtime's name, got {value!r}")
    return value


def round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def head_choices(space: Any, head_dim: int) -> list[int]:
    """The head counts a space offers at `head_dim`: its choices, each rounded up (where
    `multiple_of` asks) so that heads x head_dim is a multiple of `multiple_of`."""
    step = space.multiple_of // math.gcd(space.multiple_of, head_dim)
    return sorted({round_up(h, step) for h in space.heads})


def widest(space: Any) -> tuple[int, int, int]:
    """The most heads, the widest hidden size and the widest FFN a space's students can have,
    after rounding."""
    widths = [(h, h * d, r) for d in space.head_dim for h in head_choices(space, d) for r in space.ffn_ratio]
    ffn = max(round_up(max(1, round(r * w)), space.multiple_of) for _, w, r in widths)
    return max(h for h, _, _ in widths), max(w for _, w, _ in widths), ffn


def sample_width(trial: Any, space: Any) -> dict[str, Any]:
    """heads, head_dim and ffn_ratio from a space's choices (the same parameter names in every
    space); where widths are rounded (`multiple_of`), the head count among those that make the
    width a multiple, one parameter per head width (each distribution's choices stay fixed)."""
    if space.multiple_of == 1:
        return {
            "heads": trial.suggest_categorical("heads", list(space.heads)),
            "head_dim": trial.suggest_categorical("head_dim", list(space.head_dim)),
            "ffn_ratio": trial.suggest_categorical("ffn_ratio", [float(r) for r in space.ffn_ratio]),
        }
    head_dim = trial.suggest_categorical("head_dim", list(space.head_dim))
    return {
        "heads": trial.suggest_categorical(f"heads_of_{head_dim}", head_choices(space, head_dim)),
        "head_dim": head_dim,
        "ffn_ratio": trial.suggest_categorical("ffn_ratio", [float(r) for r in space.ffn_ratio]),
        "multiple_of": space.multiple_of,
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
    multiple_of: int

    @classmethod
    def from_dict(cls, arch: dict[str, Any]) -> Any:
        return cls(**{f.name: arch[f.name] for f in dataclasses.fields(cls) if f.name in arch})

    def to_dict(self) -> dict[str, Any]:
        """As sampled: `multiple_of` only where it rounds (architectures stored before it stay equal)."""
        arch = dataclasses.asdict(self)
        return {k: v for k, v in arch.items() if k != "multiple_of" or v != 1}

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def ffn(self) -> int:
        """ratio x hidden, rounded up to a multiple of `multiple_of`"""
        return round_up(max(1, round(self.ffn_ratio * self.hidden)), self.multiple_of)

    def check_multiple(self) -> None:
        if self.multiple_of < 1 or self.hidden % self.multiple_of:
            raise ValueError(f"multiple_of: the width {self.hidden} (heads x head_dim) is not a multiple of {self.multiple_of}")


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
