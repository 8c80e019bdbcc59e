"""``metamergen serve``: the pipeline behind HTTP, for gaze-contingent experiments.

- :mod:`~metamergen.serve.app`: :func:`create_app`, the FastAPI application (routes, errors, limits),
  and :func:`serve_in_thread` to run it inside a script or notebook;
- :mod:`~metamergen.serve.batcher`: the worker thread that owns the pipeline and batches requests;
- :mod:`~metamergen.serve.cache`: the bounded LRU store of scenes and their encodings;
- :mod:`~metamergen.serve.inputs`: uploads, stimulus names and fixations turned into checked inputs;
- :mod:`~metamergen.serve.schemas`: the request and response models (the OpenAPI schema);
- :mod:`~metamergen.serve.config`: limits, batching and default sampling settings;
- :mod:`~metamergen.serve.metrics`: counters and latency percentiles behind ``/metrics``;
- :mod:`~metamergen.serve.logs`: JSON-line log records;
- :mod:`~metamergen.serve.client`: :class:`MetamerGenClient`, a small httpx client (no torch).

The server needs the ``serve`` extra (``pip install metamergen[serve]``: fastapi, uvicorn, httpx);
names are imported on first use. The render record both ``render`` and the server return is
:mod:`metamergen.pipeline.record`.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "create_app": ".app",
    "serve_in_thread": ".app",
    "Batcher": ".batcher",
    "SceneCache": ".cache",
    "MetamerGenClient": ".client",
    "RenderResult": ".client",
    "ServeError": ".client",
    "ServerBusy": ".client",
    "Limits": ".config",
    "RenderDefaults": ".config",
    "ServeConfig": ".config",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
