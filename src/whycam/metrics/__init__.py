"""Evaluation of saliency maps: faithfulness (ROAD, deletion, insertion, Average Drop, Increase in
Confidence), localisation against boxes and masks, and sanity checks by model randomisation.

Every metric returns a ``MetricResult``: per-image scores, a headline value with a bootstrap
interval, and ``higher_is_better``.
"""

from .faithfulness import average_drop, deletion, increase_in_confidence, insertion, road
from .imputation import noisy_linear_impute
from .result import MetricResult

__all__ = [
    "MetricResult",
    "average_drop",
    "deletion",
    "increase_in_confidence",
    "insertion",
    "noisy_linear_impute",
    "road",
]
