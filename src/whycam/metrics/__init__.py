"""Evaluation of saliency maps: faithfulness (ROAD, deletion, insertion, Average Drop, Increase in
Confidence), localisation against boxes and masks, and sanity checks by model randomisation.

Every metric returns a ``MetricResult``: per-image scores, a headline value with a bootstrap
interval, and ``higher_is_better``.
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
from .result import MetricResult
from .sanity import sanity_check, spearman, ssim

__all__ = [
    "MetricResult",
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
    "sanity_check",
    "spearman",
    "ssim",
    "topk_iou",
]
