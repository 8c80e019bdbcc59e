"""The per-metamer measures a model-metamers run writes into its manifest, as report columns.

Each row of ``metamergen model-metamers``' ``manifest.jsonl`` (one metamer) carries the outcome of
the run's own tests beside the image paths, so that ``metamergen score`` passes them through and
``metamergen report`` summarises them with the same statistics as the image metrics (mean over
natural images, bootstrap interval):

=====================  ===========================================================================
``recognized``         1 if every generating model (the model, or each ensemble member's) gives the
                       metamer the label it gives the natural image, else 0
``null_test_passed``   1 if the metamer passes Feather's null test at every layer it matches, else 0
                       (only in runs with null images)
``loss``               the synthesis loss at the end (the normalised distance the run minimised)
=====================  ===========================================================================

They are registered with the metric registry here, so the report labels them with a direction while
the core never names them. Light on purpose (no torch): the report imports it.
"""

from __future__ import annotations

from metamergen.evaluation.registry import MetricInfo, register_metric_info

__all__ = ["LOSS", "MEASURE_INFO", "NULL_TEST_PASSED", "RECOGNIZED"]

RECOGNIZED = "recognized"
NULL_TEST_PASSED = "null_test_passed"
LOSS = "loss"

#: The measures, in the order the report shows them (before the image metrics).
MEASURE_INFO: dict[str, MetricInfo] = {
    RECOGNIZED: MetricInfo("recognised by its model(s) (share)", "Rec", True),
    NULL_TEST_PASSED: MetricInfo("null test passed (share)", "Null", True),
    LOSS: MetricInfo("final synthesis loss", "Loss", False),
}
for _name, _info in MEASURE_INFO.items():
    register_metric_info(_name, _info)
