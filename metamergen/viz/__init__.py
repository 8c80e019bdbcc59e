"""Figures and the HTML report: what people look at.

- :mod:`~metamergen.viz.figures`: the scanpath on the scene, what the model saw, contact sheets;
- :mod:`~metamergen.viz.report`: score table -> figures with bootstrap intervals, sheets, ``index.html``;
  scene metamers and model metamers (``metamergen model-metamers``) on one page.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "contact_sheet": ".figures",
    "draw_scanpath": ".figures",
    "foveated_input": ".figures",
    "ReportError": ".report",
    "ReportResult": ".report",
    "read_table": ".report",
    "summarize_layers": ".report",
    "summarize_scores": ".report",
    "write_report": ".report",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
