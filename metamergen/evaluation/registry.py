"""The metric registry: every score column's name, label and direction, declared in one place.

Light on purpose (no torch): the command line reads it for ``--help`` and the report reads it for
labels, without loading any model. The metric implementations (:mod:`~metamergen.evaluation.metrics`)
register under the same names; other packages add their own measures with
:func:`register_metric_info` (the demo registers its toy-world object measures that way), so the
core never names them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_INFO",
    "MODEL_METRICS",
    "WEIGHT_FREE_METRICS",
    "MetricInfo",
    "metric_direction",
    "metric_info",
    "register_metric_info",
]


@dataclass(frozen=True)
class MetricInfo:
    """How to label a metric column: long label, short caption tag, direction."""

    label: str
    short: str
    higher_is_similar: bool

    @property
    def direction(self) -> str:
        return "higher = more similar" if self.higher_is_similar else "lower = more similar"


#: Metric column -> label and direction. Order = caption priority in figures and sheets.
METRIC_INFO: dict[str, MetricInfo] = {
    "dreamsim": MetricInfo("DreamSim distance", "DS", False),
    "clip": MetricInfo("CLIP cosine similarity", "CLIP", True),
    "dino": MetricInfo("DINOv2 cosine similarity", "DINO", True),
    "ssim": MetricInfo("SSIM", "SSIM", True),
    "psnr": MetricInfo("PSNR (dB)", "PSNR", True),
    "mse": MetricInfo("MSE", "MSE", False),
    "color_hist": MetricInfo("colour-histogram distance", "Hist", False),
    "gabor": MetricInfo("Gabor-energy distance", "Gabor", False),
    "sobel": MetricInfo("Sobel-energy distance", "Sobel", False),
}

#: Metrics that need no model weights.
WEIGHT_FREE_METRICS: tuple[str, ...] = ("psnr", "mse", "ssim", "color_hist", "gabor", "sobel")
#: Metrics that run a network (weights downloaded on the user's machine, or the pipeline's DINOv2).
MODEL_METRICS: tuple[str, ...] = ("clip", "dreamsim", "dino")
#: What ``metamergen score`` computes without ``--metrics`` (plus ``dino`` when a pipeline is given).
DEFAULT_METRICS: tuple[str, ...] = (*WEIGHT_FREE_METRICS, "clip", "dreamsim")


def register_metric_info(name: str, info: MetricInfo, *, replace: bool = False) -> None:
    """Make the report label the score column ``name`` with ``info`` (added after the built-ins)."""
    if name in METRIC_INFO and not replace and METRIC_INFO[name] != info:
        raise ValueError(f"A metric named {name!r} is registered already ({METRIC_INFO[name]}); pass replace=True.")
    METRIC_INFO[name] = info


def metric_direction(name: str) -> str:
    """``"higher = more similar"``, ``"lower = more similar"``, or ``"direction unknown"`` if unregistered."""
    return METRIC_INFO[name].direction if name in METRIC_INFO else "direction unknown"


def metric_info(name: str) -> MetricInfo:
    """The registered info of ``name``; an unregistered column is labelled by its name, higher = similar."""
    return METRIC_INFO.get(name, MetricInfo(name, name, True))
