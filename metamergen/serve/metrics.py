"""Counters and latency percentiles behind ``/metrics`` (JSON; thread-safe).

Latencies are request arrival to response ready, in milliseconds, over the last ``window``
completed renders; percentiles are nearest-rank (the smallest value with at least p % of the
window at or below it), so every reported value is one that was measured.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

__all__ = ["ServeMetrics", "percentile"]


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``; ``None`` when empty."""
    if not 0 < p <= 100:
        raise ValueError(f"p must be in (0, 100], got {p}.")
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class ServeMetrics:
    """What the server counts. Every method may be called from any thread.

    Parameters
    ----------
    window
        Completed renders kept for the latency percentiles.
    """

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._batch_sizes: Counter[int] = Counter()
        self._status: Counter[int] = Counter()
        self._batch_seconds: deque[float] = deque(maxlen=50)
        self.renders = 0
        self.images = 0
        self.deadline_misses = 0
        self.rejected_busy = 0
        self.cancelled = 0
        self.interrupted_batches = 0
        self.failed_batches = 0

    def observe_status(self, status: int) -> None:
        with self._lock:
            self._status[status] += 1

    def observe_batch(self, requests: int, images: int, seconds: float, *, interrupted: bool = False) -> None:
        with self._lock:
            self._batch_sizes[requests] += 1
            self._batch_seconds.append(seconds)
            self.images += images
            self.interrupted_batches += int(interrupted)

    def observe_failed_batch(self) -> None:
        with self._lock:
            self.failed_batches += 1

    def observe_render(self, latency_ms: float, *, deadline_missed: bool) -> None:
        with self._lock:
            self.renders += 1
            self._latency_ms.append(latency_ms)
            self.deadline_misses += int(deadline_missed)

    def observe_rejected(self) -> None:
        with self._lock:
            self.rejected_busy += 1

    def observe_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def mean_batch_seconds(self) -> float | None:
        """Mean wall time of the recent batches (for ``Retry-After``), or ``None`` before any."""
        with self._lock:
            return sum(self._batch_seconds) / len(self._batch_seconds) if self._batch_seconds else None

    def snapshot(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict (``/metrics`` adds the queue, cache and model)."""
        with self._lock:
            latencies = list(self._latency_ms)
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "renders": self.renders,
                "images": self.images,
                "batches": sum(self._batch_sizes.values()),
                "batch_sizes": {str(k): v for k, v in sorted(self._batch_sizes.items())},
                "interrupted_batches": self.interrupted_batches,
                "failed_batches": self.failed_batches,
                "deadline_misses": self.deadline_misses,
                "rejected_busy": self.rejected_busy,
                "cancelled": self.cancelled,
                "responses": {str(k): v for k, v in sorted(self._status.items())},
                "latency_ms": {
                    "count": len(latencies),
                    "p50": percentile(latencies, 50),
                    "p95": percentile(latencies, 95),
                    "max": max(latencies) if latencies else None,
                },
            }
