"""matplotlib without pyplot: figures drawn off-screen, with no global state (safe in workers)."""

from __future__ import annotations

from typing import Any

__all__ = ["figure_classes"]


def figure_classes() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``; raises :class:`ImportError` with the install command if missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("MetamerGen's figures need matplotlib: pip install matplotlib.") from err
    return Figure, FigureCanvasAgg
