"""Evaluation: how close each hypothesis is to its scene, and what predicts a viewer's "same".

- :mod:`~metamergen.evaluation.registry`: every metric's name, label and direction (light);
- :mod:`~metamergen.evaluation.metrics`: the metrics (PSNR/MSE/SSIM, colour, Gabor/Sobel, CLIP,
  DreamSim, DINOv2 cosine) behind one :class:`Metric` interface;
- :mod:`~metamergen.evaluation.scoring`: a study's manifest -> score table;
- :mod:`~metamergen.evaluation.statistics`: unit means and bootstrap intervals;
- :mod:`~metamergen.evaluation.tables`: reading score tables (CSV / Parquet);
- :mod:`~metamergen.evaluation.analysis`: the paper's behavioural analysis (binned proportions,
  logistic and forward-stepwise regression);
- :mod:`~metamergen.evaluation.diagnostics`: does the model use its conditioning at all.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_METRICS": ".registry",
    "METRIC_INFO": ".registry",
    "MODEL_METRICS": ".registry",
    "WEIGHT_FREE_METRICS": ".registry",
    "MetricInfo": ".registry",
    "metric_info": ".registry",
    "register_metric_info": ".registry",
    "METRICS": ".metrics",
    "Metric": ".metrics",
    "build_metrics": ".metrics",
    "build_score_metrics": ".scoring",
    "load_manifest_rows": ".scoring",
    "manifest_order": ".scoring",
    "score_manifest": ".scoring",
    "write_score_table": ".scoring",
    "bootstrap_ci": ".statistics",
    "derive_cell_seed": ".statistics",
    "paired_difference": ".statistics",
    "unit_means": ".statistics",
    "TableError": ".tables",
    "read_table": ".tables",
    "AnalysisError": ".analysis",
    "analyze": ".analysis",
    "binned_proportions": ".analysis",
    "forward_stepwise": ".analysis",
    "logistic_regression": ".analysis",
    "wilson_interval": ".analysis",
    "write_analysis": ".analysis",
    "conditioning_reconstruction": ".diagnostics",
    "stream_contributions": ".diagnostics",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
