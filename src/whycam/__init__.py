"""whycam: saliency maps for vision models, with DiffCAM at the centre."""

__version__ = "0.1.0"

from . import metrics, targets
from .data import load_images
from .layers import LayerNotFoundError
from .medical import load_volume
from .methods.base import CAMExplainer, Explainer, methods, register
from .methods.cam import CAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .methods.diffcam import DiffCAM
from .methods.gradient import (
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from .methods.perturbation import RISE, MeaningfulPerturbation, Occlusion
from .methods.score import AblationCAM, ScoreCAM
from .methods.transformer import AttentionRelevance, AttentionRollout
from .models import load_model
from .reference import ReferenceBank, ReferenceStats

__all__ = [
    "AblationCAM",
    "AttentionRelevance",
    "AttentionRollout",
    "CAM",
    "CAMExplainer",
    "DiffCAM",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "LayerCAM",
    "LayerNotFoundError",
    "MeaningfulPerturbation",
    "Occlusion",
    "RISE",
    "ReferenceBank",
    "ReferenceStats",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "XGradCAM",
    "__version__",
    "load_images",
    "load_volume",
    "load_model",
    "methods",
    "metrics",
    "register",
    "targets",
]
