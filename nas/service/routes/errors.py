"""The error answers every API route documents: one line naming the key at fault."""

from __future__ import annotations

from typing import Any

from nas.service.models import Problem

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": text}
    for status, text in (
        (400, "invalid input"),
        (404, "no such study, trial, export or job"),
        (409, "a run holds the study or the trial"),
        (422, "a request that does not fit its schema"),
    )
}
