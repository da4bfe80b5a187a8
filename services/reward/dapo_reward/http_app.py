"""The reward service's REST front end: `POST /v1/score`, `/healthz`, Prometheus `/metrics`."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dapo import __version__
from dapo_reward.models import ScoreRequestModel, ScoreResponseModel
from dapo_reward.scoring import BadRequest, Item, Scorer

router = APIRouter()


@router.post("/v1/score", response_model=ScoreResponseModel)
async def score(body: ScoreRequestModel, request: Request) -> ScoreResponseModel:
    """Verify each item's response against its ground truth."""
    scorer: Scorer = request.app.state.scorer
    items = [Item(i.id, i.response, i.ground_truth) for i in body.items]
    overrides = body.math_verify.model_dump(exclude_unset=True) if body.math_verify else None
    results = await scorer.score(body.verifier, items, body.binary, overrides)
    return ScoreResponseModel.model_validate({"results": [asdict(r) for r in results]})


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, object]:
    scorer: Scorer = request.app.state.scorer
    return {"status": "ok", "workers_alive": scorer.pool.num_alive()}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    scorer: Scorer = request.app.state.scorer
    scorer.metrics.workers.set(scorer.pool.num_alive())
    return Response(generate_latest(scorer.registry), media_type=CONTENT_TYPE_LATEST)


async def bad_request(request: Request, exc: Exception) -> JSONResponse:
    """A request the scorer rejects (the message names the field), as FastAPI answers invalid bodies."""
    return JSONResponse({"detail": str(exc)}, status_code=422)


def create_http_app(scorer: Scorer) -> FastAPI:
    """The app shares the scorer (and so the worker pool) with the gRPC server of the same process."""
    app = FastAPI(title="dapo reward", version=__version__)
    app.state.scorer = scorer
    app.include_router(router)
    app.add_exception_handler(BadRequest, bad_request)
    return app
