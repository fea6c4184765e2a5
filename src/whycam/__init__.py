"""whycam: saliency maps for vision models, with DiffCAM at the centre."""

__version__ = "0.1.0"

from .layers import LayerNotFoundError
from .methods.base import CAMExplainer, Explainer, methods, register
from .methods.cam import CAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .methods.gradient import (
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from .methods.perturbation import RISE, MeaningfulPerturbation, Occlusion

__all__ = [
    "CAM",
    "CAMExplainer",
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
    "Saliency",
    "SmoothGrad",
    "XGradCAM",
    "methods",
    "register",
    "__version__",
]
