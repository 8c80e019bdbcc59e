"""The HTTP API's request and response bodies (pydantic): what ``/docs`` and ``/openapi.json`` show.

Requests are strict: unknown keys are refused (a misspelt ``foveal_scal`` is a 422, not a silently
ignored option), numbers must be JSON numbers (no ``"5"``), NaN and infinities are refused, and
options left out (or ``null``) take the server's defaults. Coordinates are ``(x, y)`` in pixels of
the scene image: origin at the top-left corner, x to the right, y down, pixel ``i`` covering
``[i, i + 1)`` (the frame of every MetamerGen entry point, ``docs/design.md``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

from metamergen.study.plan import CONDITIONS

__all__ = [
    "BatchInfo",
    "Condition",
    "DemoScene",
    "DemoSceneRequest",
    "DemoScenes",
    "ErrorBody",
    "Health",
    "Hypothesis",
    "MetricScores",
    "ModelViewRequest",
    "RenderRequest",
    "RenderResponse",
    "SceneInfo",
    "ServerSettings",
    "StimulusRequest",
    "StimuliList",
    "Timing",
]

#: Pattern of a scene id (:func:`metamergen.serve.cache.scene_id`).
SCENE_ID_PATTERN = r"^[0-9a-f]{32}$"


#: Numbers must be JSON numbers (``"5"`` and ``true`` are refused); an int is a valid float.
Float = Annotated[float, Strict()]
Int = Annotated[int, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: A study condition (:data:`metamergen.study.CONDITIONS`): which adapter streams a render uses.
Condition = Literal[CONDITIONS]


class ModelViewRequest(_Strict):
    """What the model is shown for a fixation list: the options of a render that change its input."""

    scene_id: str = Field(pattern=SCENE_ID_PATTERN, description="id returned by POST /scenes")
    fixations: list[tuple[Float, Float]] = Field(
        default_factory=list,
        description="(x, y) fixations in pixels of the scene image, in viewing order; [] = periphery only",
    )
    n: Int | None = Field(
        default=None, ge=0, description="use the first n fixations (after the off-image policy); null = all"
    )
    foveal_scale: Float | None = Field(default=None, ge=0, description="λ_f (paper 1.2; 0 = foveal stream off)")
    peripheral_scale: Float | None = Field(default=None, ge=0, description="λ_p (paper 0.7; 0 = periphery off)")
    peripheral_blur: Float | None = Field(
        default=None, gt=0, le=1, description="peripheral down/up scale s in (0, 1] (1 = no blur; paper 0.25)"
    )
    condition: Condition | None = Field(
        default=None,
        description="both streams (default), or one kept and the other dropped (foveal, peripheral, *:dropped) "
        "or switched off by a zero scale (*:off), as `metamergen generate --conditions` has them",
    )
    off_image: Literal["drop", "clip", "error"] | None = Field(
        default=None, description="fixations outside the image: drop (default, reported), clip or error"
    )


class RenderRequest(ModelViewRequest):
    """One render: a registered scene, one fixation list and the sampling options."""

    hypotheses: Int | None = Field(default=None, ge=1, description="images to render; hypothesis i uses seed + i")
    seed: Int = Field(default=0, ge=0, lt=2**63, description="seed of the first hypothesis")
    steps: Int | None = Field(default=None, ge=1, description="DDIM steps (paper 50)")
    guidance: Literal["cfg++", "cfg"] | None = Field(default=None, description="sampler guidance (paper cfg++)")
    guidance_scale: Float | None = Field(default=None, description="CFG++'s λ in [0, 1] (default 0.6) or CFG's w >= 0")
    deadline_ms: Float | None = Field(
        default=None, gt=0, description="report the response as late beyond this many ms after arrival"
    )
    scores: bool = Field(
        default=False,
        description="also score every hypothesis against the scene with the weight-free metrics (no downloads)",
    )


class StimulusRequest(_Strict):
    """A scene named from the server's stimulus folder."""

    name: str = Field(min_length=1, max_length=1024, description="path relative to the stimulus folder, '/' separated")


class SceneInfo(BaseModel):
    """A registered scene."""

    scene_id: str = Field(description="content id (SHA-256 of the decoded pixels); use it in POST /render")
    name: str = Field(description="how render records name the scene")
    width: int = Field(description="pixels")
    height: int = Field(description="pixels")
    encoded_blurs: list[float] = Field(description="peripheral blurs whose encoding is cached")
    warnings: list[str] = Field(default_factory=list, description="what the image loader reported")


class StimuliList(BaseModel):
    """The image files of the stimulus folder."""

    names: list[str]


class DemoSceneRequest(_Strict):
    """A scene named from the demo's toy scenes (``GET /demo/scenes``)."""

    name: str = Field(min_length=1, max_length=255, description="a name GET /demo/scenes lists")


class DemoScene(BaseModel):
    """One toy scene of the bundled demo model's held-out split, as `metamergen demo` writes it."""

    name: str = Field(description="its file name under <metamergen demo --out>/scenes/images")
    width: int
    height: int
    png_base64: str = Field(description="the PNG file, base64")
    viewer_fixations: list[tuple[float, float]] = Field(description="the toy viewer's scanpath, (x, y) image pixels")


class DemoScenes(BaseModel):
    """The demo's toy scenes."""

    scenes: list[DemoScene]


class MetricScores(BaseModel):
    """One metric's score of every hypothesis against the scene."""

    name: str = Field(description="the score column `metamergen score` names it")
    label: str
    higher_is_similar: bool
    values: list[float | None] = Field(description="one per hypothesis, in seed order (null: not finite)")


class ServerSettings(BaseModel):
    """What a client needs to offer a render's options: defaults, limits, the model's canvas."""

    model: str
    defaults: dict[str, Any] = Field(description="the option values a request inherits")
    limits: dict[str, int] = Field(description="max_steps, max_hypotheses, max_fixations, max_pixels, ...")
    conditions: list[str]
    blur_levels: list[float] = Field(description="the paper's peripheral blur levels")
    canvas_size: int = Field(description="the encoder's square canvas, pixels")
    patch_size: int = Field(description="the encoder's patch side, canvas pixels")
    grid_size: int = Field(description="patches along each side of the canvas")
    metrics: list[str] = Field(description="what a render with scores: true is scored with")


class Hypothesis(BaseModel):
    """One rendered image."""

    name: str = Field(description="the file name `metamergen render` gives it (hypothesis_000_seed0.png)")
    seed: int
    width: int = Field(description="pixels")
    height: int = Field(description="pixels")
    png_base64: str = Field(description="the PNG file, base64 (standard alphabet, padded)")


class Timing(BaseModel):
    """Where a render's time went, milliseconds."""

    queued_ms: float = Field(description="submission to the start of its pipeline call")
    render_ms: float = Field(
        description="the pipeline call (shared by the batch; scene encoding included if not cached)"
    )
    total_ms: float = Field(description="arrival of the request to the response being ready")


class BatchInfo(BaseModel):
    """The pipeline call a request shared."""

    requests: int = Field(description="requests in the call (1 = rendered alone, as `metamergen render` would)")
    images: int


class RenderResponse(BaseModel):
    """A render's images and its record."""

    scene_id: str
    record: dict[str, Any] = Field(description="exactly what `metamergen render` writes to render.json for this render")
    images: list[Hypothesis]
    warnings: list[str] = Field(description="e.g. fixations dropped by the off-image policy")
    deadline_ms: float | None
    deadline_missed: bool
    timing: Timing
    batch: BatchInfo
    scores: list[MetricScores] | None = Field(default=None, description="with scores: true")


class Health(BaseModel):
    """Liveness and what is loaded."""

    status: Literal["ok", "starting", "stopped"]
    model: str
    model_revision: str | None
    device: str
    dtype: str
    queue_depth: int
    version: str


class ErrorBody(BaseModel):
    """Every error response: a one-line message, and FastAPI's details for invalid bodies."""

    message: str = Field(description="what is wrong and what to do")
    detail: Any = Field(default=None, description="per-field errors (422), or the message again")
