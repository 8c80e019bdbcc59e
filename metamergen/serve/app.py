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
``POST /render/stream``     the same render as server-sent events: progress per step, then the result
``POST /model-view``        scene id + fixations + options -> PNG of what the model is given
``GET /scenes/{id}/image``  a registered scene's decoded pixels (PNG)
``GET /demo/scenes``        the demo's toy scenes (PNG, base64) and their viewer scanpaths
``POST /scenes/demo``       ``{"name": "<a demo scene>"}`` -> a scene id
``GET /settings``           defaults, limits, conditions and the model's canvas, for a form
``GET /explorer/``          the explorer page (static files; ``GET /`` redirects there)
==========================  ==================================================================

Threads: the event loop only parses, queues and awaits. The :class:`~metamergen.serve.batcher.Batcher`
thread owns the pipeline; one *intake* thread decodes images and builds fixation lists (the
only thread that captures warnings, see :mod:`~metamergen.serve.inputs`); PNG encoding runs in
Starlette's thread pool. Errors are JSON ``{"message": ..., "detail": ...}`` with a 4xx for any
input the server refuses, and a 500 only for a failure of its own (logged, no traceback sent).

Uploads are the request body itself (``Content-Type: image/png`` or any image type), not a
multipart form: the byte limit then holds while the body streams in, nothing is spooled, and
no multipart parser is needed. Routes live on an :class:`~fastapi.APIRouter`; the explorer's
static files are mounted beside them and need no API key (they hold no data: the page asks for
the key when the API wants one).

Progress is streamed as server-sent events over the ``POST`` itself rather than by polling a job
id: one request carries the render from start to result, so the server keeps no job table to
expire, and a client that goes away cancels its work exactly as ``POST /render``'s does. Browsers
read the stream with ``fetch`` (``EventSource`` can neither ``POST`` nor send ``X-API-Key``).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import functools
import io
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metamergen import __version__
from metamergen.pipeline.record import hypothesis_filename, render_record
from metamergen.serve import explorer
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
    DemoScene,
    DemoSceneRequest,
    DemoScenes,
    ErrorBody,
    Health,
    Hypothesis,
    MetricScores,
    ModelViewRequest,
    RenderRequest,
    RenderResponse,
    SceneInfo,
    ServerSettings,
    StimuliList,
    StimulusRequest,
    Timing,
)

if TYPE_CHECKING:
    from PIL import Image

    from metamergen.fixations.records import Scanpath
    from metamergen.foveation.frame import EncoderFrame
    from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline
    from metamergen.serve.inputs import RenderSettings

__all__ = ["API_KEY_HEADER", "ServeState", "create_app", "serve_in_thread"]

logger = logging.getLogger("metamergen.serve")

#: The header carrying the API key.
API_KEY_HEADER = "X-API-Key"

#: Status logged for a request whose client went away before its response (nginx's convention).
CLIENT_CLOSED = 499

#: Seconds between keep-alive comments of an event stream with nothing else to say.
KEEP_ALIVE_S = 1.0

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

    async def frame(self, scene: Scene) -> EncoderFrame:
        """The encoder frame the pipeline maps ``scene`` with, from its encoding (the same at every blur)."""
        for blur in self.cache.blurs(scene):
            encoding = scene.encodings.get(blur)
            if encoding is not None:
                return encoding.frames[0]
        job = EncodeJob(scene=scene, blur=self.config.defaults.peripheral_blur)
        return (await asyncio.wrap_future(self.submit(job))).frames[0]

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


class PageHeaders:
    """The explorer's static files, served with a content security policy: this origin only.

    The page must work offline, so nothing it loads may come from elsewhere; the policy makes the
    browser refuse (and the browser test notice) any script, style, image or request that does.
    """

    POLICY = (
        "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", self.POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"cache-control", b"no-cache"),
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


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


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # as `render` saves its files: the same encoder, the same bytes
    return buf.getvalue()


def _pngs(images: list[Image.Image]) -> list[tuple[str, int, int]]:
    return [(base64.b64encode(_png(im)).decode("ascii"), im.width, im.height) for im in images]


@dataclass
class _Prepared:
    """A checked render request, queued or about to be."""

    scene: Scene
    settings: RenderSettings
    scanpath: Scanpath
    warnings: list[str]
    arrived: float


async def _prepare(body: ModelViewRequest, state: ServeState, arrived: float) -> _Prepared:
    """A request's scene, settings and fixation list, checked as for every render (4xx on bad input)."""
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
    return _Prepared(scene=scene, settings=settings, scanpath=scanpath, warnings=warnings, arrived=arrived)


def _render_job(body: RenderRequest, prepared: _Prepared, state: ServeState, progress: Any = None) -> RenderJob:
    return RenderJob(
        scene=prepared.scene,
        scanpath=prepared.scanpath,
        settings=prepared.settings,
        seed=body.seed,
        output_size=state.output_size(prepared.scene),
        progress=progress,
    )


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


async def _response(
    body: RenderRequest, prepared: _Prepared, outcome: RenderOutcome, request: Request, state: ServeState
) -> RenderResponse:
    """The response of a finished render: PNGs, the record, timing, deadline, scores if asked."""
    config = state.config
    settings, scene = prepared.settings, prepared.scene
    pngs = await run_in_threadpool(_pngs, outcome.images)
    scores = None
    if body.scores:
        scores = [
            MetricScores(**m) for m in await run_in_threadpool(explorer.score_images, scene.image, outcome.images)
        ]
    record = render_record(
        image=scene.name,
        fixations=prepared.scanpath.xy,
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
    if settings.condition != "both":  # render has no condition; `metamergen generate --conditions` does
        record["condition"] = settings.condition
    total_ms = (time.monotonic() - prepared.arrived) * 1e3
    missed = settings.deadline_ms is not None and total_ms > settings.deadline_ms
    state.metrics.observe_render(total_ms, deadline_missed=missed)
    if missed:
        logger.warning(
            "deadline missed",
            extra={
                "fields": {
                    "event": "deadline_missed",
                    "request_id": _request_id(request),
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
        warnings=prepared.warnings,
        deadline_ms=settings.deadline_ms,
        deadline_missed=missed,
        timing=Timing(queued_ms=outcome.queued_s * 1e3, render_ms=outcome.render_s * 1e3, total_ms=total_ms),
        batch=BatchInfo(requests=outcome.batch_requests, images=outcome.batch_images),
        scores=scores,
    )


def _cancelled(state: ServeState, job: RenderJob, request: Request) -> None:
    state.batcher.cancel(job)
    state.metrics.observe_cancelled()
    logger.info("cancelled", extra={"fields": {"event": "cancelled", "request_id": _request_id(request)}})


@api.post("/render", response_model=RenderResponse, summary="Render hypotheses of a scene from fixations")
async def render(body: RenderRequest, request: Request, state: StateDep) -> Response | RenderResponse:
    """Queue one render; batch-compatible requests arriving together share a pipeline call. If the
    client disconnects first, the request is dropped from the queue (or its batch stopped, when no
    other client waits on it)."""
    prepared = await _prepare(body, state, time.monotonic())
    job = _render_job(body, prepared, state)
    result = asyncio.wrap_future(state.submit(job))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not result.done():
        result.cancel()
        _cancelled(state, job, request)
        return Response(status_code=CLIENT_CLOSED)
    try:
        outcome: RenderOutcome = result.result()
    except ShuttingDown as err:
        raise HTTPException(503, str(err)) from None
    return await _response(body, prepared, outcome, request, state)


def _event(name: str, data: Any) -> bytes:
    """One server-sent event (``event:`` and a one-line JSON ``data:``)."""
    return f"event: {name}\ndata: {json.dumps(jsonable_encoder(data), allow_nan=False)}\n\n".encode()


@api.post(
    "/render/stream",
    summary="Render as server-sent events: progress per denoising step, then the result",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream (docs/serve.md)"}},
)
async def render_stream(body: RenderRequest, request: Request, state: StateDep) -> StreamingResponse:
    """The body and its checks are ``POST /render``'s, and refused input gets the same JSON 4xx
    before any event. Then ``text/event-stream``: ``queued`` (``ahead``: requests before it,
    ``steps``), ``started`` (``requests`` sharing the call, ``encoding``), one ``step`` per
    denoising step (``step`` of ``steps``), and last either ``result`` (``POST /render``'s
    response body) or ``error`` (``status``, ``message``). Closing the connection cancels the
    render as for ``POST /render``."""
    prepared = await _prepare(body, state, time.monotonic())
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def progress(event: str, fields: dict[str, Any]) -> None:  # on the worker thread
        loop.call_soon_threadsafe(events.put_nowait, (event, fields))

    job = _render_job(body, prepared, state, progress)
    ahead = state.batcher.depth
    result = asyncio.wrap_future(state.submit(job))  # a full queue is a 503 here, before the stream

    async def stream() -> AsyncIterator[bytes]:
        yield _event("queued", {"ahead": ahead, "steps": prepared.settings.steps})
        try:
            while not result.done() or not events.empty():
                got = asyncio.ensure_future(events.get())
                await asyncio.wait({got, result}, timeout=KEEP_ALIVE_S, return_when=asyncio.FIRST_COMPLETED)
                if got.done():
                    yield _event(*got.result())
                    continue
                got.cancel()
                if not result.done():
                    yield b": keep-alive\n\n"  # a comment line: a gone client is noticed within a second
            try:
                outcome: RenderOutcome = result.result()
            except ShuttingDown as err:
                yield _event("error", {"status": 503, "message": str(err)})
                return
            except Exception as err:  # noqa: BLE001 - the stream has started: reported as its last event
                request_id = _request_id(request)
                logger.error(
                    "render failed", exc_info=err, extra={"fields": {"event": "error", "request_id": request_id}}
                )
                message = f"Internal error ({type(err).__name__}); the server log has the details under request id {request_id}."
                yield _event("error", {"status": 500, "message": message})
                return
            response = await _response(body, prepared, outcome, request, state)
            yield _event("result", response.model_dump())
        finally:
            if not result.done():  # the client went away (Starlette cancelled this generator)
                result.cancel()
                _cancelled(state, job, request)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy buffering of the events
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@api.post(
    "/model-view",
    summary="What the model is given for a fixation list (PNG)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the view, with the patch grid"}},
)
async def model_view(body: ModelViewRequest, state: StateDep) -> Response:
    """The model's input for this scene, fixation list, blur and condition, as ``render``'s contact
    sheet shows it (:func:`metamergen.encoders.view.foveated_input`), enlarged to at least 512 px
    with the model's patch grid drawn and the foveal patches given outlined. Headers
    ``X-Canvas-Size``, ``X-Patch-Size``, ``X-Grid-Size``, ``X-Patches-Shown``, ``X-View`` (both,
    peripheral or foveal) and ``X-Fixations-Used`` describe it."""
    prepared = await _prepare(body, state, time.monotonic())
    frame = await state.frame(prepared.scene)
    fovea, periphery = prepared.settings.streams_shown

    def draw() -> tuple[bytes, dict[str, Any]]:
        image, info = explorer.model_view(
            prepared.scene.image,
            prepared.scanpath.xy,
            frame,
            peripheral_blur=prepared.settings.peripheral_blur,
            fovea=fovea,
            periphery=periphery,
        )
        return _png(image), info

    png, info = await run_in_threadpool(draw)
    headers = {f"X-{k.replace('_', '-').title()}": str(v) for k, v in info.items()}
    headers["X-Fixations-Used"] = str(len(prepared.scanpath.xy))
    return Response(png, media_type="image/png", headers=headers)


@api.get(
    "/scenes/{scene_id}/image",
    summary="A registered scene's pixels (PNG)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the decoded scene fixations refer to"}},
)
async def scene_image(scene_id: Annotated[str, PathParam(pattern=SCENE_ID_PATTERN)], state: StateDep) -> Response:
    """The scene as the server decoded it (orientation and transparency as the image loader made
    them): the pixels whose coordinates fixations are given in."""
    scene = state.cache.get(scene_id)
    if scene is None:
        raise InputError(404, _unknown_scene(scene_id, state))
    return Response(await run_in_threadpool(_png, scene.image), media_type="image/png")


@api.get("/demo/scenes", response_model=DemoScenes, summary="The demo's toy scenes and their viewer scanpaths")
async def demo_scene_list() -> DemoScenes:
    """The first held-out scenes of the bundled demo model (the files ``metamergen demo --scenes 8``
    writes), each with its PNG and its toy viewer's fixations. Any model can render them."""

    def listing() -> DemoScenes:
        return DemoScenes(
            scenes=[
                DemoScene(
                    name=d.name,
                    width=d.image.width,
                    height=d.image.height,
                    png_base64=base64.b64encode(_png(d.image)).decode("ascii"),
                    viewer_fixations=list(d.viewer_fixations),
                )
                for d in explorer.demo_scenes()
            ]
        )

    return await run_in_threadpool(listing)


@api.post("/scenes/demo", status_code=201, response_model=SceneInfo, summary="Register one of the demo's toy scenes")
async def demo_scene(body: DemoSceneRequest, response: Response, state: StateDep) -> SceneInfo:
    """Name a scene of ``GET /demo/scenes``; render records name it by that file name."""
    scenes = {d.name: d for d in await run_in_threadpool(explorer.demo_scenes)}
    found = scenes.get(body.name)
    if found is None:
        raise InputError(404, f"No demo scene {body.name!r}; GET /demo/scenes lists them.")
    return await _register(state, _identify(found.image.copy(), found.name), [], response)


@api.get("/settings", response_model=ServerSettings, summary="Defaults, limits, conditions, the model's canvas")
async def server_settings(state: StateDep) -> ServerSettings:
    """What a form needs to offer a render's options: the values a request inherits, the limits
    it must keep, the conditions, the paper's blur levels and the model's canvas and patch grid."""
    from metamergen.defaults import BLUR_LEVELS, resolve_guidance_scale
    from metamergen.encoders.dinov2 import canvas_size
    from metamergen.study.plan import CONDITIONS

    config, pipe = state.config, state.pipe
    size, patch = canvas_size(pipe.feature_extractor), int(pipe.image_encoder.config.patch_size)
    defaults = dataclasses.asdict(config.defaults)
    defaults["guidance_scale"] = resolve_guidance_scale(config.defaults.guidance, config.defaults.guidance_scale)
    return ServerSettings(
        model=config.model,
        defaults=defaults,
        limits=dataclasses.asdict(config.limits),
        conditions=list(CONDITIONS),
        blur_levels=list(BLUR_LEVELS),
        canvas_size=size,
        patch_size=patch,
        grid_size=size // patch,
        metrics=list(explorer.SCORE_METRICS),
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

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/explorer/")

    app.mount("/explorer", PageHeaders(StaticFiles(directory=explorer.STATIC_DIR, html=True)), name="explorer")
    # added last = outermost: the log line sees every response, the 413s of the body limit included
    app.add_middleware(
        BodyLimitMiddleware,
        default=config.limits.max_json_bytes,
        per_path={"/scenes": config.limits.max_upload_bytes},
    )
    app.add_middleware(RequestLogMiddleware, metrics=stats)
    return app


@contextmanager
def serve_in_thread(app: ASGIApp, *, host: str = "127.0.0.1", timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread on a free port of ``host``; yields its base URL.

    For a notebook, a script or a test that talks to the server from the same process
    (``MetamerGenClient(url)``, a browser); ``metamergen serve`` is the way to run it for an experiment.
    The server stops when the block ends.
    """
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host} within {timeout:g} s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
