"""The worker: one thread owns the pipeline and renders queued requests in dynamic batches.

Every pipeline use (scene encoding and rendering) happens on this one thread, so the pipeline is
never entered twice at once, its GPU memory is one model's, and the request handlers (on the
event loop) only queue work and await its result. The loop:

1. take the oldest waiting job (encode or render);
2. if it is a render, wait up to ``batch_wait`` for more *batch-compatible* renders (the same
   :attr:`RenderJob.key`: steps, guidance, scales, blur, hypotheses and output size), taking
   those already waiting first, until ``max_batch`` requests; incompatible jobs keep their place;
3. run them as **one** pipeline call: every request's fixation list, its scene's encoding, and
   one ``torch.Generator`` per image seeded ``seed + i``; the images are split back per request.

A request rendered alone makes exactly the call ``metamergen render`` makes (one scene, one list,
``num_images_per_prompt = hypotheses``, the same generators), so its pixels equal ``render``'s on the
same hardware. A batched request gets the same noise, but a batched UNet call may round its last
bits differently on some hardware (the responses say how many requests shared the call; serve
with ``max_batch=1`` where bit-for-bit reproduction of every trial matters more than throughput).

Queue: bounded (``max_queue``); :meth:`Batcher.submit` raises :class:`QueueFull` beyond it.
Results travel back in :class:`concurrent.futures.Future` objects, the standard library's
executor protocol: a job cancelled while queued (its client went away) is removed and skipped; a
running batch whose every client went away stops at the next denoising step
(``pipe._interrupt``, diffusers' way). The same ``callback_on_step_end`` reports each step to
the jobs' progress listeners (:data:`ProgressListener`), which ``POST /render/stream`` turns into
server-sent events.

Written on a :class:`collections.deque` under a :class:`threading.Condition` rather than
:class:`queue.Queue` because batching takes compatible jobs out of the middle of the queue.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from metamergen.serve.cache import Scene, SceneCache
from metamergen.serve.metrics import ServeMetrics

if TYPE_CHECKING:
    from PIL import Image

    from metamergen.encoders.scene import SceneEncoding
    from metamergen.fixations.records import Scanpath
    from metamergen.pipeline.pipeline_metamergen import MetamerGenPipeline
    from metamergen.serve.inputs import RenderSettings

__all__ = [
    "Batcher",
    "EncodeJob",
    "ProgressListener",
    "QueueFull",
    "RenderJob",
    "RenderOutcome",
    "ShuttingDown",
    "concat_scenes",
]

logger = logging.getLogger("metamergen.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already; try again later."""


class ShuttingDown(Exception):
    """The server stopped before this job ran."""


@dataclass(eq=False)
class _Job:
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future, init=False)
    #: Set when the client went away; a running batch stops once all its jobs are abandoned.
    abandoned: threading.Event = field(default_factory=threading.Event, init=False)
    enqueued: float = field(default=0.0, init=False)

    @property
    def key(self) -> Hashable | None:
        """Jobs with equal, non-None keys may share one pipeline call."""
        return None


@dataclass(eq=False)
class EncodeJob(_Job):
    """Encode ``scene`` at peripheral ``blur`` (two encoder passes); the result is the encoding."""

    scene: Scene
    blur: float


#: A render job's progress listener: ``(event, fields)``, called on the worker thread. Events:
#: ``"started"`` (``requests`` in the batch, ``encoding``: whether a scene is encoded first) and
#: ``"step"`` (``step``, 1-based, of ``steps``), from the pipeline's ``callback_on_step_end``.
ProgressListener = Callable[[str, dict[str, Any]], None]


@dataclass(eq=False)
class RenderJob(_Job):
    """Render ``settings.hypotheses`` images of ``scene`` from ``scanpath``, seeds ``seed + i``.

    ``progress``, if given, hears the job's batch start and each denoising step (it must return
    quickly: it runs inside the denoising loop; an exception it raises is logged and ignored).
    """

    scene: Scene
    scanpath: Scanpath
    settings: RenderSettings
    seed: int
    output_size: tuple[int, int]
    progress: ProgressListener | None = None

    def tell(self, event: str, **fields: Any) -> None:
        """Hand ``event`` to the progress listener, if any, without letting it break the render."""
        if self.progress is None:
            return
        try:
            self.progress(event, fields)
        except Exception:  # noqa: BLE001 - a listener's failure must not fail the batch
            logger.exception("progress listener failed", extra={"fields": {"event": "progress_failed"}})

    @property
    def key(self) -> Hashable:
        return (self.settings.batch_key(), self.output_size)


@dataclass
class RenderOutcome:
    """What a render job's future resolves to.

    Attributes
    ----------
    images
        The request's hypotheses, PIL RGB, in seed order.
    batch_requests, batch_images
        How many requests and images shared the pipeline call.
    queued_s, render_s
        Seconds from submission to the batch's start, and the batch's own wall time (encoding
        included when the scene's encoding at this blur was not cached).
    """

    images: list[Image.Image]
    batch_requests: int
    batch_images: int
    queued_s: float
    render_s: float


def concat_scenes(encodings: Sequence[SceneEncoding]) -> SceneEncoding:
    """One :class:`~metamergen.encoders.SceneEncoding` holding ``encodings`` in order (same blur).

    Written here because ``SceneEncoding`` offers ``select`` (a subset) but no concatenation.
    """
    import torch

    first = encodings[0]
    if len(encodings) == 1:
        return first
    if any(e.blur != first.blur for e in encodings):
        raise ValueError("Scene encodings batched together must share one peripheral blur.")
    return dataclasses.replace(
        first,
        sharp=torch.cat([e.sharp for e in encodings]),
        peripheral=torch.cat([e.peripheral for e in encodings]),
        pixel_values=torch.cat([e.pixel_values for e in encodings]),
        frames=tuple(f for e in encodings for f in e.frames),
    )


class Batcher:
    """The pipeline's one worker thread and its bounded queue (module docstring).

    Parameters
    ----------
    pipe
        The loaded pipeline; only this object's thread calls it after :meth:`start`.
    cache
        Where encodings are looked up and stored.
    metrics
        Where batches, cancellations and failures are counted.
    max_batch
        Most render requests per pipeline call (1: no batching).
    batch_wait
        Seconds to wait for compatible requests after taking the first of a batch.
    max_queue
        Most jobs waiting (not counting the batch being rendered).
    """

    def __init__(
        self,
        pipe: MetamerGenPipeline,
        cache: SceneCache,
        metrics: ServeMetrics,
        *,
        max_batch: int = 8,
        batch_wait: float = 0.01,
        max_queue: int = 32,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or batch_wait < 0:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= 1, batch_wait >= 0; got {max_batch}, {max_queue}, {batch_wait}."
            )
        self.pipe = pipe
        self.cache = cache
        self.metrics = metrics
        self.max_batch = int(max_batch)
        self.batch_wait = float(batch_wait)
        self.max_queue = int(max_queue)
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._running: list[_Job] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    # ------------------------------------------------------------------ control

    def start(self, *, warmup: bool = False) -> None:
        """Start the worker thread (after one throw-away render when ``warmup``)."""
        if self._thread is not None:
            raise RuntimeError("The batcher is running already.")
        self._thread = threading.Thread(target=self._run, args=(warmup,), name="metamergen-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop taking work: queued jobs fail with :class:`ShuttingDown`, a running batch is interrupted."""
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            for job in self._running:
                job.abandoned.set()
            self._cond.notify_all()
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown("The server is shutting down; this request was not run."))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the batch being rendered)."""
        with self._cond:
            return len(self._queue)

    @property
    def busy(self) -> int:
        """Jobs in the pipeline call running now."""
        with self._cond:
            return len(self._running)

    def submit(self, job: _Job) -> concurrent.futures.Future:
        """Queue ``job``; returns its future. Raises :class:`QueueFull` or :class:`ShuttingDown`."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("The server is shutting down.")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting already (the limit).")
            job.enqueued = time.monotonic()
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def cancel(self, job: _Job) -> bool:
        """The client of ``job`` went away: drop it if queued (True), or mark it abandoned if running."""
        job.abandoned.set()
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
        job.future.cancel()
        return True

    # ------------------------------------------------------------------ the worker

    def _run(self, warmup: bool) -> None:
        if warmup:
            try:
                self._warmup()
            except Exception:  # noqa: BLE001 - a failed warm-up must not stop the server; renders will report
                logger.exception("warm-up render failed", extra={"fields": {"event": "warmup_failed"}})
        self.ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            with self._cond:
                self._running = list(batch)
            try:
                if isinstance(batch[0], EncodeJob):
                    self._encode(batch[0])
                else:
                    self._render(batch)
            finally:
                with self._cond:
                    self._running = []

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            first = None
            while first is None:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                job = self._queue.popleft()
                if job.future.set_running_or_notify_cancel():
                    first = job
            batch = [first]
            if first.key is None or self.max_batch == 1:
                return batch
            end = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch and not self._stopping:
                match = next((j for j in self._queue if j.key == first.key), None)
                if match is not None:
                    self._queue.remove(match)
                    if match.future.set_running_or_notify_cancel():
                        batch.append(match)
                    continue
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _encoding(self, scene: Scene, blur: float) -> SceneEncoding:
        found = self.cache.encoding(scene, blur)
        if found is None:
            found = self.pipe.encode_scene(scene.image, peripheral_blur=blur)
            self.cache.add_encoding(scene, blur, found)
        return found

    def _encode(self, job: EncodeJob) -> None:
        try:
            job.future.set_result(self._encoding(job.scene, job.blur))
        except Exception as err:  # noqa: BLE001 - delivered to the waiting request
            job.future.set_exception(err)

    def _render(self, batch: list[RenderJob]) -> None:
        import torch

        start = time.monotonic()
        settings = batch[0].settings
        k = settings.hypotheses
        interrupted = False

        def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            nonlocal interrupted
            if all(job.abandoned.is_set() for job in batch):
                pipe._interrupt = True  # diffusers' documented way to end the loop early
                interrupted = True
            total = int(getattr(pipe, "_num_timesteps", None) or settings.steps)
            for job in batch:
                job.tell("step", step=step + 1, steps=total)
            return callback_kwargs

        encoding = any(settings.peripheral_blur not in job.scene.encodings for job in batch)
        for job in batch:
            job.tell("started", requests=len(batch), encoding=encoding)
        try:
            by_scene: dict[str, SceneEncoding] = {}
            for job in batch:
                if job.scene.scene_id not in by_scene:
                    by_scene[job.scene.scene_id] = self._encoding(job.scene, settings.peripheral_blur)
            if len(by_scene) == 1:  # one scene: the exact call `render` makes (scene index 0 for every list)
                scene = next(iter(by_scene.values()))
            else:
                scene = concat_scenes([by_scene[job.scene.scene_id] for job in batch])
            generators = [torch.Generator().manual_seed(job.seed + i) for job in batch for i in range(k)]
            out = self.pipe(
                scene=scene,
                fixations=[job.scanpath for job in batch],
                num_images_per_prompt=k,
                num_inference_steps=settings.steps,
                guidance=settings.guidance,
                guidance_scale=settings.guidance_scale,
                foveal_scale=settings.foveal_scale,
                peripheral_scale=settings.peripheral_scale,
                drop_streams=settings.drop_streams,
                generator=generators,
                callback_on_step_end=step_end,
            )
        except Exception as err:  # noqa: BLE001 - delivered to every waiting request of the batch
            self.metrics.observe_failed_batch()
            logger.exception(
                "batch failed", extra={"fields": {"event": "batch_failed", "requests": len(batch), "error": repr(err)}}
            )
            for job in batch:
                job.future.set_exception(err)
            return
        seconds = time.monotonic() - start
        self.metrics.observe_batch(len(batch), len(batch) * k, seconds, interrupted=interrupted)
        logger.info(
            "batch",
            extra={
                "fields": {
                    "event": "batch",
                    "requests": len(batch),
                    "images": len(batch) * k,
                    "steps": settings.steps,
                    "ms": round(seconds * 1e3, 2),
                    "interrupted": interrupted,
                }
            },
        )
        for i, job in enumerate(batch):
            job.future.set_result(
                RenderOutcome(
                    images=list(out.images[i * k : (i + 1) * k]),
                    batch_requests=len(batch),
                    batch_images=len(batch) * k,
                    queued_s=start - job.enqueued,
                    render_s=seconds,
                )
            )

    def _warmup(self) -> None:
        from PIL import Image

        from metamergen.fixations.records import Scanpath

        scene = self.pipe.encode_scene(Image.new("RGB", (64, 64), (128, 128, 128)))
        self.pipe(scene=scene, fixations=[Scanpath((), 64, 64)], num_inference_steps=1, output_type="pil")
