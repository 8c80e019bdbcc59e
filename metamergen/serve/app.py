"""The HTTP application: :func:`create_app` builds a FastAPI app around one loaded pipeline.

Routes (all JSON; ``/docs`` and ``/openapi.json`` are FastAPI's own):

==========================  ==================================================================
``GET /health``             liveness, model, device, queue depth (never needs the API key)
``GET /metrics``            counters, batch sizes, latency p50/p95, deadline misses, cache
``POST /scenes``            the body is an image file's bytes -> a scene id (encoded once)
``POST /scenes/stimulus``   ``{"name": "<file in the stimulus folder>"}`` -> a scene id
``GET /scenes/{scene_id}``  a registered scene
``GET /stimuli``            the stimulus folder's image files
``POST /render``            scene id + fixations + options -> PNGs (base64) and the render record
==========================  ==================================================================

Threads: the event loop only parses, queues and awaits. The :class:`~metamergen.serve.batcher.Batcher`
thread owns the pipeline; one *intake* thread decodes images and builds fixation lists (the
only thread that captures warnings, see :mod:`~metamergen.serve.inputs`); PNG encoding runs in
Starlette's thread pool. Errors are JSON ``{"message": ..., "detail": ...}`` with a 4xx for any
input the server refuses, and a 500 only for a failure of its own (logged, no traceback sent).

Uploads are the request body itself (``Content-Type: image/png`` or any image type), not a
multipart form: the byte limit then holds while the body streams in, nothing is spooled, and
no multipart parser is needed. Routes live on an :class:`~fastapi.APIRouter`, so static files (an
explorer page, say) can be mounted beside them without touching them.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import io
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metamergen import __version__
from metamergen.pipeline.record import hypothesis_filename, render_record
from metamergen.serve.batcher import Batcher, EncodeJob, QueueFull, RenderJob, RenderOutcome, ShuttingDown
from metamergen.serve.cache import Scene, SceneCache, scene_id
from metamergen.serve.config import ServeConfig
from metamergen.serve.inputs import (
    InputError,
    build_scanpath,
    decode_upload,
    list_stimuli,
    load_stimulus,
    resolve_settings,
    resolve_stimulus,
)
from metamergen.serve.metrics import ServeMetrics
from metamergen.serve.schemas import (
    SCENE_ID_PATTERN,
    BatchInfo,
    ErrorBody,
    Health,
    Hypothesis,
    RenderRequest,
    RenderResponse,
    SceneInfo,
    StimuliList,
    StimulusRequest,
    Timing,
)

if TYPE_CHECKING:
    from PIL import Image

    from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline

__all__ = ["API_KEY_HEADER", "ServeState", "create_app"]

logger = logging.getLogger("metamergen.serve")

#: The header carrying the API key.
API_KEY_HEADER = "X-API-Key"

#: Status logged for a request whose client went away before its response (nginx's convention).
CLIENT_CLOSED = 499

T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in {
        401: "missing or wrong API key",
        404: "unknown scene or stimulus",
        413: "body, image or pixel count over the server's limit",
        422: "invalid input (the message names it)",
        503: "queue full (see Retry-After) or shutting down",
    }.items()
}


# ---------------------------------------------------------------------------------- state


@dataclass
class ServeState:
    """What the routes share (``app.state.serve``)."""

    pipe: MetamerGenPipeline
    config: ServeConfig
    cache: SceneCache
    metrics: ServeMetrics
    batcher: Batcher
    intake_pool: concurrent.futures.ThreadPoolExecutor
    device: str
    dtype: str

    async def intake(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the intake thread (image decoding, fixation checks) without blocking the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.intake_pool, functools.partial(fn, *args, **kwargs))

    def output_size(self, scene: Scene) -> tuple[int, int]:
        """``(height, width)`` the pipeline renders ``scene`` at (its default: the scene's aspect at native area)."""
        from metamergen.pipeline.pipeline_metamergen import output_size

        factor = self.pipe.vae_scale_factor
        return output_size(scene.width, scene.height, int(self.pipe.unet.config.sample_size) * factor, factor)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch (at least 1)."""
        per_batch = self.metrics.mean_batch_seconds() or 1.0
        batches = math.ceil((self.batcher.depth + 1) / self.batcher.max_batch)
        return max(1, math.ceil(batches * per_batch))

    def submit(self, job: Any) -> concurrent.futures.Future:
        try:
            return self.batcher.submit(job)
        except QueueFull as err:
            self.metrics.observe_rejected()
            raise HTTPException(
                503,
                f"The server is busy: {err} Retry after the number of seconds in Retry-After.",
                headers={"Retry-After": str(self.retry_after())},
            ) from None
        except ShuttingDown as err:
            raise HTTPException(503, str(err)) from None


def get_state(request: Request) -> ServeState:
    """Dependency: the app's :class:`ServeState`."""
    return request.app.state.serve


_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when the server has a key")


def require_api_key(
    request: Request, key: Annotated[str | None, Security(_api_key)] = None
) -> None:  # a dependency: FastAPI's security scheme, so /docs shows the key field
    expected = get_state(request).config.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.encode()):
        raise HTTPException(
            401,
            f"This server needs its API key in the {API_KEY_HEADER} header"
            + (" (the one given is wrong)." if key is not None else "."),
            headers={"WWW-Authenticate": "APIKey"},
        )


# ---------------------------------------------------------------------------------- ASGI middleware


def _error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message, "detail": message}, status_code=status, headers=dict(headers or {}))


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is over this server's limit of {limit} bytes for this route.")


class BodyLimitMiddleware:
    """Refuse request bodies over a per-path byte limit with a JSON 413.

    A declared ``Content-Length`` over the limit is answered before the app runs; a body that
    streams past the limit raises a 413 ``HTTPException`` from ``receive``, which FastAPI passes
    on to the error handler. FastAPI's own ``max_body_size`` answers the first case in plain text,
    and this API promises JSON for every error, hence this small middleware.
    """

    def __init__(self, app: ASGIApp, *, default: int, per_path: Mapping[str, int]) -> None:
        self.app = app
        self.default = default
        self.per_path = dict(per_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _error_response(413, _BodyTooLarge(limit).detail)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


class RequestLogMiddleware:
    """One JSON log line per request (method, path, status, ms, request id) and status counts.

    Pure ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` wraps
    ``receive``, which would hide a client's disconnect from the render route.
    """

    def __init__(self, app: ASGIApp, *, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = CLIENT_CLOSED

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.observe_status(status)
            client = scope.get("client")
            logger.info(
                "request",
                extra={
                    "fields": {
                        "event": "request",
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round((time.perf_counter() - start) * 1e3, 2),
                        "client": f"{client[0]}:{client[1]}" if client else None,
                    }
                },
            )


# ---------------------------------------------------------------------------------- errors


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """JSON bodies ``{"message", "detail"}`` for every error, through FastAPI's exception handlers."""

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error_response(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        summary = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        # location, message and type of each error; not pydantic's echo of the input, which may be
        # large or hold NaN (which JSON cannot carry: a NaN coordinate is one of the errors refused)
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        body = {"message": f"Invalid request: {summary}{more}.", "detail": jsonable_encoder(detail)}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.scope.get("state", {}).get("request_id")
        logger.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"event": "error", "request_id": request_id, "path": request.url.path}},
        )
        return _error_response(
            500, f"Internal error ({type(exc).__name__}); the server log has the details under request id {request_id}."
        )


# ---------------------------------------------------------------------------------- routes

api = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)
StateDep = Annotated[ServeState, Depends(get_state)]


def _scene_info(state: ServeState, scene: Scene, warnings: list[str] | None = None) -> SceneInfo:
    return SceneInfo(
        scene_id=scene.scene_id,
        name=scene.name,
        width=scene.width,
        height=scene.height,
        encoded_blurs=state.cache.blurs(scene),
        warnings=warnings or [],
    )


def _identify(image: Image.Image, label: str) -> Scene:
    return Scene(scene_id=scene_id(image), name=label, image=image)


async def _register(state: ServeState, scene: Scene, warnings: list[str], response: Response) -> SceneInfo:
    kept = state.cache.add(scene)
    if kept is not scene:
        response.status_code = 200  # registered before: same id, nothing new encoded
    blur = state.config.defaults.peripheral_blur
    if blur not in kept.encodings:
        await asyncio.wrap_future(state.submit(EncodeJob(scene=kept, blur=blur)))
    return _scene_info(state, kept, warnings)


@api.post(
    "/scenes",
    status_code=201,
    response_model=SceneInfo,
    summary="Register a scene from an uploaded image file",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the image file's bytes (PNG, JPEG, ...), as the whole body",
            "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_scene(
    request: Request,
    response: Response,
    state: StateDep,
    name: Annotated[
        str | None, Query(max_length=255, description="file name for render records (default 'upload')")
    ] = None,
) -> SceneInfo:
    """Decode the body with the project's image loader, register it under its content id and encode
    it at the server's default peripheral blur. 201 when new, 200 when already registered."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/", "application/x-www-form-urlencoded", "application/json")):
        raise InputError(
            415,
            f"POST /scenes takes the image file's bytes as the body (e.g. Content-Type: image/png), not {content_type.split(';')[0]}; "
            "to use a file of the stimulus folder, POST /scenes/stimulus.",
        )
    data = await request.body()
    if not data:
        raise InputError(422, "The body is empty: send the image file's bytes as the request body.")
    label = PurePosixPath(name or "upload").name or "upload"
    limits = state.config.limits

    def decode() -> tuple[Scene, list[str]]:
        image, warnings = decode_upload(data, name=label, limits=limits)
        return _identify(image, label), warnings

    scene, warnings = await state.intake(decode)
    return await _register(state, scene, warnings, response)


@api.post(
    "/scenes/stimulus", status_code=201, response_model=SceneInfo, summary="Register a scene from the stimulus folder"
)
async def stimulus_scene(body: StimulusRequest, response: Response, state: StateDep) -> SceneInfo:
    """Name a file inside the server's ``--stimuli`` folder. Absolute names, ``..`` and symlinks
    leading out of the folder are refused."""
    root = state.config.stimuli
    if root is None:
        raise InputError(
            404, "This server has no stimulus folder (start it with --stimuli DIR); upload with POST /scenes."
        )
    limits = state.config.limits

    def load() -> tuple[Scene, list[str]]:
        path, label = resolve_stimulus(root, body.name)
        image, warnings = load_stimulus(path, label, limits)
        return _identify(image, label), warnings

    scene, warnings = await state.intake(load)
    return await _register(state, scene, warnings, response)


@api.get("/scenes/{scene_id}", response_model=SceneInfo, summary="A registered scene")
async def get_scene(scene_id: Annotated[str, PathParam(pattern=SCENE_ID_PATTERN)], state: StateDep) -> SceneInfo:
    scene = state.cache.get(scene_id)
    if scene is None:
        raise InputError(404, _unknown_scene(scene_id, state))
    return _scene_info(state, scene)


@api.get("/stimuli", response_model=StimuliList, summary="The stimulus folder's image files")
async def stimuli(state: StateDep) -> StimuliList:
    if state.config.stimuli is None:
        return StimuliList(names=[])
    return StimuliList(names=await state.intake(list_stimuli, state.config.stimuli))


def _unknown_scene(key: str, state: ServeState) -> str:
    return (
        f"No scene {key} is registered (never, or evicted: the cache holds {state.cache.max_bytes // 2**20} MiB); "
        "register it again with POST /scenes or POST /scenes/stimulus."
    )


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the ASGI ``http.disconnect`` message)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _pngs(images: list[Image.Image]) -> list[tuple[str, int, int]]:
    out = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")  # as `render` saves its files: the same encoder, the same bytes
        out.append((base64.b64encode(buf.getvalue()).decode("ascii"), im.width, im.height))
    return out


@api.post("/render", response_model=RenderResponse, summary="Render hypotheses of a scene from fixations")
async def render(body: RenderRequest, request: Request, state: StateDep) -> Response | RenderResponse:
    """Queue one render; batch-compatible requests arriving together share a pipeline call. If the
    client disconnects first, the request is dropped from the queue (or its batch stopped, when no
    other client waits on it)."""
    arrived = time.monotonic()
    config = state.config
    scene = state.cache.get(body.scene_id)
    if scene is None:
        raise InputError(404, _unknown_scene(body.scene_id, state))
    settings = resolve_settings(body.model_dump(), config.defaults, config.limits)
    scanpath, warnings = await state.intake(
        build_scanpath,
        body.fixations,
        width=scene.width,
        height=scene.height,
        off_image=settings.off_image,
        n=body.n,
        image=scene.name,
        limits=config.limits,
    )
    job = RenderJob(
        scene=scene, scanpath=scanpath, settings=settings, seed=body.seed, output_size=state.output_size(scene)
    )
    result = asyncio.wrap_future(state.submit(job))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not result.done():
        state.batcher.cancel(job)
        result.cancel()
        state.metrics.observe_cancelled()
        logger.info(
            "cancelled",
            extra={"fields": {"event": "cancelled", "request_id": request.scope.get("state", {}).get("request_id")}},
        )
        return Response(status_code=CLIENT_CLOSED)
    try:
        outcome: RenderOutcome = result.result()
    except ShuttingDown as err:
        raise HTTPException(503, str(err)) from None
    pngs = await run_in_threadpool(_pngs, outcome.images)
    record = render_record(
        image=scene.name,
        fixations=scanpath.xy,
        model=config.model,
        model_revision=config.model_revision,
        seed=body.seed,
        num_images=settings.hypotheses,
        steps=settings.steps,
        guidance=settings.guidance,
        guidance_scale=settings.guidance_scale,
        foveal_scale=settings.foveal_scale,
        peripheral_scale=settings.peripheral_scale,
        peripheral_blur=settings.peripheral_blur,
    )
    total_ms = (time.monotonic() - arrived) * 1e3
    missed = settings.deadline_ms is not None and total_ms > settings.deadline_ms
    state.metrics.observe_render(total_ms, deadline_missed=missed)
    if missed:
        logger.warning(
            "deadline missed",
            extra={
                "fields": {
                    "event": "deadline_missed",
                    "request_id": request.scope.get("state", {}).get("request_id"),
                    "deadline_ms": settings.deadline_ms,
                    "total_ms": round(total_ms, 2),
                    "queued_ms": round(outcome.queued_s * 1e3, 2),
                }
            },
        )
    return RenderResponse(
        scene_id=scene.scene_id,
        record=record,
        images=[
            Hypothesis(
                name=hypothesis_filename(i, body.seed + i), seed=body.seed + i, width=w, height=h, png_base64=b64
            )
            for i, (b64, w, h) in enumerate(pngs)
        ],
        warnings=warnings,
        deadline_ms=settings.deadline_ms,
        deadline_missed=missed,
        timing=Timing(queued_ms=outcome.queued_s * 1e3, render_ms=outcome.render_s * 1e3, total_ms=total_ms),
        batch=BatchInfo(requests=outcome.batch_requests, images=outcome.batch_images),
    )


@api.get("/metrics", summary="Counters, batch sizes, latency percentiles, cache")
async def metrics(state: StateDep) -> dict[str, Any]:
    """JSON: ``queue`` (depth, running, max), ``batching`` (max batch, wait), ``batch_sizes``
    (requests per pipeline call -> count), ``latency_ms`` (p50, p95, max over the last 1000
    renders, arrival to response), ``deadline_misses``, ``rejected_busy``, ``cancelled``,
    ``responses`` (status -> count) and ``cache`` (scenes, bytes, hits, misses, evictions)."""
    config = state.config
    return {
        "model": config.model,
        "device": state.device,
        "queue": {"depth": state.batcher.depth, "running": state.batcher.busy, "max": state.batcher.max_queue},
        "batching": {"max_batch": state.batcher.max_batch, "wait_ms": config.batch_wait_ms},
        **state.metrics.snapshot(),
        "cache": state.cache.stats(),
    }


# ---------------------------------------------------------------------------------- the app


def create_app(pipe: MetamerGenPipeline, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``pipe`` (run it with uvicorn, or ``fastapi.testclient.TestClient``).

    Parameters
    ----------
    pipe
        A loaded :class:`~metamergen.pipeline.MetamerGenPipeline`, already on its device. From
        the app's startup on, only the app's worker thread calls it.
    config
        Model description, limits, defaults, batching, cache, stimuli and API key.

    Returns
    -------
    fastapi.FastAPI
        Its lifespan starts the worker (and warm-up render) and stops it, failing queued
        requests with 503, on shutdown.
    """
    cache = SceneCache(config.cache_bytes)
    stats = ServeMetrics()
    batcher = Batcher(
        pipe,
        cache,
        stats,
        max_batch=config.max_batch,
        batch_wait=config.batch_wait_ms / 1e3,
        max_queue=config.limits.max_queue,
    )
    pipe.set_progress_bar_config(disable=True)
    state = ServeState(
        pipe=pipe,
        config=config,
        cache=cache,
        metrics=stats,
        batcher=batcher,
        intake_pool=concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="metamergen-intake"),
        device=config.device or str(pipe.device),
        dtype=config.dtype or str(pipe.unet.dtype).removeprefix("torch."),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start(warmup=config.warmup)
        logger.info(
            "started",
            extra={
                "fields": {
                    "event": "started",
                    "model": config.model,
                    "device": state.device,
                    "dtype": state.dtype,
                    "max_batch": config.max_batch,
                    "max_queue": config.limits.max_queue,
                }
            },
        )
        try:
            yield
        finally:
            batcher.stop()
            state.intake_pool.shutdown(wait=False, cancel_futures=True)
            logger.info("stopped", extra={"fields": {"event": "stopped"}})

    app = FastAPI(
        title="MetamerGen",
        version=__version__,
        summary="Fixation-conditioned scene metamers, rendered live for gaze-contingent experiments.",
        description="See docs/serve.md. Coordinates are (x, y) pixels of the scene image, origin top-left.",
        lifespan=lifespan,
    )
    app.state.serve = state
    install_error_handlers(app)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}}, summary="Liveness")
    async def health() -> JSONResponse:
        status = "ok" if batcher.alive and batcher.ready.is_set() else "starting" if batcher.alive else "stopped"
        body = Health(
            status=status,
            model=config.model,
            model_revision=config.model_revision,
            device=state.device,
            dtype=state.dtype,
            queue_depth=batcher.depth,
            version=__version__,
        )
        return JSONResponse(body.model_dump(), status_code=503 if status == "stopped" else 200)

    app.include_router(api)
    # added last = outermost: the log line sees every response, the 413s of the body limit included
    app.add_middleware(
        BodyLimitMiddleware,
        default=config.limits.max_json_bytes,
        per_path={"/scenes": config.limits.max_upload_bytes},
    )
    app.add_middleware(RequestLogMiddleware, metrics=stats)
    return app
