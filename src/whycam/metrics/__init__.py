"""Evaluation of saliency maps: faithfulness (ROAD, deletion, insertion, Average Drop, Increase in
Confidence), localisation against boxes and masks, and sanity checks by model randomisation.

Every metric returns a ``MetricResult``: per-image scores, a headline value with a bootstrap
interval, and ``higher_is_better``. Every metric is registered with its kind, the ground truth it
reads and its better direction (``whycam.metrics.registry``).
"""

from .faithfulness import average_drop, deletion, increase_in_confidence, insertion, road
from .imputation import noisy_linear_impute
from .localisation import (
    auprc,
    box_accuracy,
    energy_pointing_game,
    mask_iou,
    max_box_accuracy,
    pointing_game,
    relevance_rank_accuracy,
    topk_iou,
)
from .registry import Metric, get_metrics, ground_truth, metric
from .result import MetricResult
from .sanity import method_factory, sanity_check, spearman, ssim

__all__ = [
    "Metric",
    "MetricResult",
    "get_metrics",
    "ground_truth",
    "metric",
    "auprc",
    "average_drop",
    "box_accuracy",
    "deletion",
    "energy_pointing_game",
    "increase_in_confidence",
    "insertion",
    "mask_iou",
    "max_box_accuracy",
    "noisy_linear_impute",
    "pointing_game",
    "relevance_rank_accuracy",
    "road",
    "method_factory",
    "sanity_check",
    "spearman",
    "ssim",
    "topk_iou",
]
