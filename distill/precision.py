"""Mixed precision: the `[resources] precision` setting, what it resolves to on a device, and
the autocast every forward pass runs under.

"bf16" is what the Hugging Face Trainer's `bf16=True` gives: a student keeps fp32 weights and
the optimizer fp32 state, its matrix products run in bfloat16 under `torch.autocast`, and the
losses are computed in fp32 (`distill.losses` casts what it reads up). A frozen teacher (the
cache's, the live one of on-policy batches) is loaded in bfloat16: half the memory. "fp32" is
fp32 throughout, teachers included, whatever dtype their checkpoint was saved in. "auto" is
bf16 where the device computes it natively (a CUDA GPU with bf16; a CPU with AVX512-BF16, AMX
or Arm's BF16 instructions) and fp32 elsewhere.

A run states its precision once, around everything it computes (`computing_in`); the task
code below it asks `autocast(device)` and `teacher_dtype()`, as it would ask torch for the
default dtype, rather than passing the setting through every call.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch

PRECISIONS = ("auto", "bf16", "fp32")
"""the values of `[resources] precision`"""
CPU_BF16 = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
"""`torch.cpu.get_capabilities()` flags of CPUs that compute bf16 natively (x86, Arm)"""

_CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("precision", default="fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matrix products natively."""
    if device.type == "cuda":  # Ampere and later; older GPUs emulate it, slowly
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return any(bool(capabilities.get(flag, False)) for flag in CPU_BF16)
    return False


def resolve(setting: str, device: torch.device) -> str:
    """"bf16" or "fp32": what `setting` (one of `PRECISIONS`) means on `device`."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return setting


@contextlib.contextmanager
def computing_in(precision: str) -> Iterator[str]:
    """Run what the block computes in `precision` ("bf16" or "fp32", as `resolve` gives)."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision: expected bf16 or fp32 (resolved), got {precision!r}")
    token = _CURRENT.set(precision)
    try:
        yield precision
    finally:
        _CURRENT.reset(token)


def current() -> str:
    """The precision of the enclosing `computing_in` block ("fp32" outside any)."""
    return _CURRENT.get()


def autocast(device: torch.device) -> Any:
    """bf16 autocast on `device` in a bf16 block; a no-op context in an fp32 one."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=current() == "bf16")


def teacher_dtype() -> torch.dtype:
    """The dtype a frozen teacher is loaded in: bfloat16 in a bf16 block, else float32."""
    return torch.bfloat16 if current() == "bf16" else torch.float32


__all__ = ["PRECISIONS", "autocast", "computing_in", "current", "native_bf16", "resolve", "teacher_dtype"]
