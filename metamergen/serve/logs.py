"""Structured logs: one JSON object per line, for ``metamergen serve`` and anything it logs through.

The server logs through :mod:`logging` (logger ``metamergen.serve``) with its fields under
``extra={"fields": {...}}``; :class:`JsonLineFormatter` turns each record into one line::

    {"ts": "2026-12-02T15:04:05.123Z", "level": "INFO", "logger": "metamergen.serve",
     "event": "request", "method": "POST", "path": "/render", "status": 200, "ms": 812.4, ...}

As a library, the package attaches no handler; :func:`configure_logging` (what the command line
calls) sends these and uvicorn's own records to stderr in this form.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["JsonLineFormatter", "configure_logging"]


class JsonLineFormatter(logging.Formatter):
    """A :class:`logging.Formatter` writing each record as one JSON line (UTC timestamps)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {"ts": ts, "level": record.levelname, "logger": record.name}
        fields = getattr(record, "fields", None)
        out["event"] = (fields or {}).get("event", record.getMessage())
        if fields:
            out.update({k: v for k, v in fields.items() if k != "event"})
        if record.getMessage() != out["event"]:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send ``metamergen.serve`` and ``uvicorn`` records to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    for name in ("metamergen.serve", "uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level)
        log.propagate = False
