"""REST API under /v1: start, list, inspect, follow (Server-Sent Events) and stop runs."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette.sse import EventSourceResponse

from dapo.config import ConfigError, apply_overrides, parse_config
from dapo.records import RunStatus, is_terminal
from dapo_controller.models import CreateRunRequest, RunRecord, ValidationErrorResponse
from dapo_controller.store import RunStore

router = APIRouter(prefix="/v1", tags=["runs"])


def get_store(request: Request) -> RunStore:
    return request.app.state.store  # type: ignore[no-any-return]


_bearer = HTTPBearer(
    auto_error=False, description="Required on POST endpoints when the controller has an API token."
)


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> None:
    """Mutating endpoints need `Authorization: Bearer <token>` when the controller has a token."""
    token = request.app.state.settings.api_token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _unprocessable(errors: list[tuple[tuple[str | int, ...], str]]) -> JSONResponse:
    detail = [{"loc": list(loc), "msg": msg, "type": "value_error"} for loc, msg in errors]
    return JSONResponse(status_code=422, content={"detail": detail})


async def _existing(store: RunStore, run_id: str) -> RunRecord:
    run = await store.get_run(run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"run {run_id!r} does not exist")
    return run


@router.post(
    "/runs",
    status_code=201,
    response_model=RunRecord,
    responses={422: {"model": ValidationErrorResponse}, 401: {"description": "API token required"}},
    dependencies=[Depends(require_token)],
)
async def create_run(body: CreateRunRequest, store: Annotated[RunStore, Depends(get_store)]) -> Any:
    """Validate a run config (JSON or YAML text, plus overrides) and queue the run."""
    if (body.config is None) == (body.config_yaml is None):
        return _unprocessable(
            [(("body",), "give exactly one of 'config' (JSON) and 'config_yaml' (YAML text)")]
        )
    data: Any = body.config
    if body.config_yaml is not None:
        try:
            data = yaml.safe_load(body.config_yaml) or {}
        except yaml.YAMLError as exc:
            return _unprocessable([(("body", "config_yaml"), f"not valid YAML: {exc}")])
        if not isinstance(data, dict):
            return _unprocessable([(("body", "config_yaml"), "must hold a mapping of sections")])
    try:
        config = parse_config(apply_overrides(data, body.overrides))
    except ConfigError as exc:
        return _unprocessable(exc.errors)
    return await store.create_run(config, body.name)


@router.get("/runs", response_model=list[RunRecord])
async def list_runs(
    store: Annotated[RunStore, Depends(get_store)],
    status: RunStatus | None = None,
) -> Any:
    """All runs, newest first (optionally only those with `status`)."""
    return await store.list_runs(status)


@router.get("/runs/{run_id}", response_model=RunRecord, responses={404: {"description": "unknown run"}})
async def get_run(run_id: str, store: Annotated[RunStore, Depends(get_store)]) -> Any:
    """One run: status, step, policy version, latest metrics, error."""
    return await _existing(store, run_id)


@router.get("/runs/{run_id}/metrics", responses={404: {"description": "unknown run"}})
async def get_metrics(
    run_id: str,
    store: Annotated[RunStore, Depends(get_store)],
    since: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[dict[str, Any]]:
    """Metric records (one per source and step) with step >= `since`."""
    await _existing(store, run_id)
    return await store.read_metrics(run_id, since)


@router.post(
    "/runs/{run_id}/stop",
    response_model=RunRecord,
    responses={404: {"description": "unknown run"}, 401: {"description": "API token required"}},
    dependencies=[Depends(require_token)],
)
async def stop_run(run_id: str, store: Annotated[RunStore, Depends(get_store)]) -> Any:
    """Stop a run: a pending one at once, a running one at its next check (within seconds)."""
    await _existing(store, run_id)
    return await store.request_stop(run_id)


# Last-Event-ID of this stream: "<events stream id>|<metrics stream id>" (either part may be absent).
_STREAM_ID = r"\d{1,19}(-\d{1,19})?"
LAST_EVENT_ID_PATTERN = rf"^({_STREAM_ID})?(\|({_STREAM_ID})?)?$"
# How long one read of a live run's streams waits for news (status changes show within this).
LIVE_WAIT_MS = 1000
# How long a stream of an ended run waits for writes that trail the terminal status.
TRAILING_WRITES_MS = 250


def split_cursor(last_event_id: str | None) -> tuple[str, str]:
    """The events and metrics stream ids to resume after ("0": from the start)."""
    events_id, _, metrics_id = (last_event_id or "").partition("|")
    return events_id or "0", metrics_id or "0"


@router.get(
    "/runs/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "event, metrics and status events"},
        404: {"description": "unknown run"},
    },
)
async def follow_run(
    run_id: str,
    store: Annotated[RunStore, Depends(get_store)],
    last_event_id: Annotated[str | None, Header(max_length=100, pattern=LAST_EVENT_ID_PATTERN)] = None,
) -> EventSourceResponse:
    """Server-Sent Events: `event` (run events), `metrics` (metric records), `status` (on a change).

    Replays what happened after `Last-Event-ID` (all of it by default; each SSE id is
    "<events id>|<metrics id>"), then streams until the run has ended and everything was sent.
    """
    await _existing(store, run_id)
    events_id, metrics_id = split_cursor(last_event_id)

    async def stream() -> AsyncIterator[dict[str, str]]:
        nonlocal events_id, metrics_id
        last_status = None
        while True:
            run = await store.get_run(run_id)
            if run is None:
                return
            if run.status != last_status:
                last_status = run.status
                yield {"event": "status", "id": f"{events_id}|{metrics_id}", "data": run.model_dump_json()}
            # A live run: wait for news. An ended run: wait only for the writes that trail its final
            # status (the closing event), then close.
            is_over = is_terminal(run.status)
            entries = await store.follow(
                run_id, events_id, metrics_id, block_ms=TRAILING_WRITES_MS if is_over else LIVE_WAIT_MS
            )
            for kind, entry_id, data in entries:
                if kind == "event":
                    events_id = entry_id
                else:
                    metrics_id = entry_id
                yield {"event": kind, "id": f"{events_id}|{metrics_id}", "data": data}
            if not entries and is_over:
                return
            await asyncio.sleep(0)

    return EventSourceResponse(stream(), ping=15)
