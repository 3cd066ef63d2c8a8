"""The studies of the folder: each with its trials and hypervolume, its Pareto front, one trial
in full, and a distilled trial's model card."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from nas.service.catalog import NotFound, model_card, trial_json
from nas.service.models import Card, Front, Study, StudySummary, TrialDetail
from nas.service.routes.errors import ERRORS
from nas.service.state import Service, service

router = APIRouter(prefix="/api/studies", tags=["studies"])
Svc = Annotated[Service, Depends(service)]


def list_studies(svc: Service) -> list[dict[str, Any]]:
    running = svc.jobs.running()
    rows = []
    for name, (file, spec, error) in sorted(svc.catalog.specs().items()):
        if spec is None:
            rows.append({"name": name, "spec": file, "error": error, "running_jobs": []})
            continue
        try:
            rows.append(svc.about(name, file, spec, running, svc.catalog.study(spec), trials=False) | {"error": None})
        except Exception as exc:  # noqa: BLE001 - one study's storage down does not hide the others
            reason = f"study.storage: cannot read {spec.storage_url}: {type(exc).__name__}: {exc}"
            rows.append({"name": name, "spec": file, "error": reason, "running_jobs": []})
    return rows


@router.get("", summary="The studies of the folder", response_model=list[StudySummary])
def get_studies(svc: Svc) -> list[dict[str, Any]]:
    return list_studies(svc)


@router.get("/{name}", summary="A study: its trials, front and hypervolume", response_model=Study, responses=ERRORS)
def get_study(name: str, svc: Svc) -> dict[str, Any]:
    file, spec, study = svc.study(name)
    return svc.about(name, file, spec, svc.jobs.running(name), study, trials=True)


@router.get(
    "/{name}/front", summary="The Pareto front (as `nas pareto --json`)", response_model=Front, responses=ERRORS
)
def get_front(name: str, svc: Svc) -> Response:
    from nas.pareto import front_json

    _, study = svc.searched(name)
    return Response(front_json(study), media_type="application/json")  # the command line's very text


@router.get("/{name}/trials/{number}", summary="One trial in full", response_model=TrialDetail, responses=ERRORS)
def get_trial(name: str, number: int, svc: Svc) -> dict[str, Any]:
    spec, study = svc.searched(name)
    return trial_json(spec, study, number)


@router.get("/{name}/trials/{number}/card", summary="A distilled trial's model card", response_model=Card, responses=ERRORS)
def get_card(name: str, number: int, svc: Svc) -> Card:
    _, spec = svc.catalog.spec_of(name)
    card = model_card(spec, number)
    if not card.is_file():
        raise NotFound(f"trial {number} of study {name!r} has no export yet")
    return Card(export=str(card.parent), markdown=card.read_text())
