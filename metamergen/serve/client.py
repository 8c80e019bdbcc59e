"""A small client for ``metamergen serve``, for experiment scripts (PsychoPy, PyGaze, plain Python).

Self-contained on purpose: it imports only httpx and the standard library (Pillow only for
:meth:`RenderResult.images`), never torch or the rest of MetamerGen, so an experiment machine can
use it without the model's dependencies, or copy this one file next to its script::

    from metamergen.serve.client import MetamerGenClient

    with MetamerGenClient("http://127.0.0.1:8000") as client:
        scene = client.upload_scene("stimuli/kitchen.jpg")          # encoded once, at scene onset
        ...                                                          # the participant views the scene
        result = client.render(scene["scene_id"], fixations, deadline_ms=5000, timeout=5.0)
        png = result.png[0]                                          # bytes of the hypothesis
        result.save("trials/017")                                    # hypothesis PNG(s) + render.json

``result.save(folder)`` writes the files ``metamergen render`` writes (minus its contact sheet),
under the same names, so ``metamergen render --image ... --fixations ...`` with the record's
settings re-creates the folder: the record says exactly what was rendered.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import httpx
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "metamergen.serve.client needs httpx: pip install 'metamergen[serve]' (or just pip install httpx)."
    ) from err

__all__ = ["MetamerGenClient", "RenderResult", "RequestTimeout", "ServeError", "ServerBusy"]

#: File name of the record ``save`` writes (``metamergen.pipeline.record.RECORD_NAME``).
RECORD_NAME = "render.json"


class ServeError(Exception):
    """The server refused or failed a request: ``status`` (HTTP) and its one-line ``message``."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class ServerBusy(ServeError):
    """503: the queue is full (or the server is stopping); ``retry_after`` seconds, if it said."""

    def __init__(self, status: int, message: str, body: Any = None, retry_after: float | None = None) -> None:
        super().__init__(status, message, body)
        self.retry_after = retry_after


class RequestTimeout(ServeError, TimeoutError):
    """No response within the request's timeout; the connection was closed, so the server dropped it."""


@dataclass
class RenderResult:
    """One render's response.

    Attributes
    ----------
    scene_id
        The scene rendered.
    record
        The render record: what ``metamergen render`` writes to ``render.json`` for this render.
    png
        The hypotheses as PNG file bytes, in seed order.
    names
        Their file names (``hypothesis_000_seed0.png``, ...).
    warnings
        What the server reported (e.g. fixations dropped as off the image).
    deadline_ms, deadline_missed
        The deadline applied (``None``: none) and whether the response was later.
    timing
        ``queued_ms``, ``render_ms``, ``total_ms`` as the server measured them.
    batch
        ``requests`` and ``images`` of the pipeline call this render shared.
    scores
        With ``render(..., scores=True)``: one entry per metric (``name``, ``label``,
        ``higher_is_similar``, ``values`` per hypothesis); else ``None``.
    """

    scene_id: str
    record: dict[str, Any]
    png: list[bytes]
    names: list[str]
    warnings: list[str] = field(default_factory=list)
    deadline_ms: float | None = None
    deadline_missed: bool = False
    timing: dict[str, float] = field(default_factory=dict)
    batch: dict[str, int] = field(default_factory=dict)
    scores: list[dict[str, Any]] | None = None

    def images(self) -> list[Any]:
        """The hypotheses as PIL images (needs Pillow)."""
        import io

        from PIL import Image

        out = []
        for data in self.png:
            with Image.open(io.BytesIO(data)) as im:
                out.append(im.convert("RGB"))
        return out

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the PNGs and ``render.json`` into ``folder`` (created), as ``metamergen render`` names them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in zip(self.names, self.png):
            (folder / name).write_bytes(data)
        # the text `metamergen render` writes (metamergen.pipeline.record.record_json)
        (folder / RECORD_NAME).write_text(json.dumps(self.record, indent=2))
        return folder


class MetamerGenClient:
    """Talk to a ``metamergen serve`` process.

    Parameters
    ----------
    base_url
        Where the server listens (default ``http://127.0.0.1:8000``).
    api_key
        Sent as ``X-API-Key`` when given (default: the ``METAMERGEN_API_KEY`` environment variable).
    timeout
        Default seconds to wait for any response (renders may pass their own).
    client
        An ``httpx.Client`` to send through instead of a new one (e.g. FastAPI's ``TestClient``);
        ``base_url`` is then ignored.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        client: httpx.Client | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get("METAMERGEN_API_KEY")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._owned = client is None
        self._http = client if client is not None else httpx.Client(base_url=base_url, timeout=timeout)
        self._headers = headers
        self.timeout = timeout

    def __enter__(self) -> MetamerGenClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (only a client this object made)."""
        if self._owned:
            self._http.close()

    # ------------------------------------------------------------------ transport

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        if timeout is not None:  # else the client's own default (FastAPI's TestClient refuses per-request ones)
            kwargs["timeout"] = timeout
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as err:
            raise RequestTimeout(0, f"no response to {method} {path} within {timeout or self.timeout} s") from err
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("message") or str(body.get("detail"))
            except (ValueError, AttributeError):
                body, message = response.text, response.text or response.reason_phrase
            if response.status_code == 503:
                retry = response.headers.get("retry-after")
                raise ServerBusy(503, message, body, float(retry) if retry and retry.isdigit() else None)
            raise ServeError(response.status_code, message, body)
        return response.json()

    # ------------------------------------------------------------------ the API

    def health(self) -> dict[str, Any]:
        """``GET /health``: status, model, device, dtype, queue depth."""
        return self._request("GET", "/health")

    def metrics(self) -> dict[str, Any]:
        """``GET /metrics``: counters, batch sizes, latency percentiles, cache."""
        return self._request("GET", "/metrics")

    def stimuli(self) -> list[str]:
        """``GET /stimuli``: the image files of the server's stimulus folder."""
        return self._request("GET", "/stimuli")["names"]

    def upload_scene(self, image: str | os.PathLike | bytes, *, name: str | None = None) -> dict[str, Any]:
        """``POST /scenes``: register (and encode) a scene from a file path or the file's bytes.

        Returns the scene's info: ``scene_id``, ``name``, ``width``, ``height``, ``encoded_blurs``.
        """
        if isinstance(image, (bytes, bytearray)):
            data, label = bytes(image), name or "upload"
        else:
            data, label = Path(image).read_bytes(), name or Path(image).name
        return self._request(
            "POST",
            "/scenes",
            params={"name": label},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def stimulus_scene(self, name: str) -> dict[str, Any]:
        """``POST /scenes/stimulus``: register a file of the server's stimulus folder by its relative name."""
        return self._request("POST", "/scenes/stimulus", json={"name": name})

    def render(
        self,
        scene_id: str,
        fixations: Sequence[Sequence[float]] = (),
        *,
        n: int | None = None,
        hypotheses: int | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance: str | None = None,
        guidance_scale: float | None = None,
        foveal_scale: float | None = None,
        peripheral_scale: float | None = None,
        peripheral_blur: float | None = None,
        off_image: str | None = None,
        condition: str | None = None,
        deadline_ms: float | None = None,
        scores: bool = False,
        timeout: float | None = None,
    ) -> RenderResult:
        """``POST /render``: hypotheses of a registered scene from ``(x, y)`` fixations in its pixels.

        Options left ``None`` take the server's defaults; ``condition`` is a study condition
        (``"both"``, ``"foveal"``, ``"peripheral"``, ...), and ``scores=True`` adds each hypothesis's
        weight-free scores against the scene (:attr:`RenderResult.scores`). ``timeout`` (seconds) bounds the wait;
        when it passes the connection is closed, the server drops the request, and
        :class:`RequestTimeout` is raised. Raises :class:`ServerBusy` on 503, :class:`ServeError`
        on any other error status.
        """
        body: dict[str, Any] = {"scene_id": scene_id, "fixations": [[float(x), float(y)] for x, y in fixations]}
        options = {
            "n": n,
            "hypotheses": hypotheses,
            "steps": steps,
            "guidance": guidance,
            "guidance_scale": guidance_scale,
            "foveal_scale": foveal_scale,
            "peripheral_scale": peripheral_scale,
            "peripheral_blur": peripheral_blur,
            "off_image": off_image,
            "condition": condition,
            "deadline_ms": deadline_ms,
            "scores": scores or None,
        }
        body.update({k: v for k, v in options.items() if v is not None})
        body["seed"] = int(seed)
        reply = self._request("POST", "/render", json=body, timeout=timeout)
        return RenderResult(
            scene_id=reply["scene_id"],
            record=reply["record"],
            png=[base64.b64decode(h["png_base64"]) for h in reply["images"]],
            names=[h["name"] for h in reply["images"]],
            warnings=reply["warnings"],
            deadline_ms=reply["deadline_ms"],
            deadline_missed=reply["deadline_missed"],
            timing=reply["timing"],
            batch=reply["batch"],
            scores=reply.get("scores"),
        )
