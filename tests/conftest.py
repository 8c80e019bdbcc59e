"""Shared fixtures. Every test runs offline: outbound connections other than loopback fail."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address):  # pragma: no cover - only hit by a regression
    host = address[0] if isinstance(address, tuple) else address
    if self.family == socket.AF_UNIX or str(host) in {"127.0.0.1", "::1", "localhost"} or str(host).startswith("127."):
        return _real_connect(self, address)
    raise RuntimeError(f"Test tried to reach the network ({address!r}); tests must run offline.")


@pytest.fixture(autouse=True, scope="session")
def no_network():
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


@pytest.fixture(scope="session")
def pipe():
    """The tiny random pipeline (shared: tests must not change its weights or processors)."""
    from metamergen.testing import tiny_pipeline

    p = tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def make_scene(width: int = 90, height: int = 60, seed: int = 0) -> Image.Image:
    """A random RGB test scene of ``width`` x ``height`` pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def wait_until(condition, timeout: float = 120.0) -> None:
    """Poll ``condition`` until true; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def loopback(app):
    """``app`` served on a free loopback port for the block (:func:`metamergen.serve.app.serve_in_thread`)."""
    from metamergen.serve.app import serve_in_thread

    return serve_in_thread(app, timeout=120.0)
