"""whycam: saliency maps for vision models, with DiffCAM at the centre."""

__version__ = "0.1.0"

from . import metrics
from .layers import LayerNotFoundError
from .methods.base import CAMExplainer, Explainer, methods, register
from .methods.cam import CAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

__all__ = [
    "CAM",
    "CAMExplainer",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LayerNotFoundError",
    "XGradCAM",
    "__version__",
    "methods",
    "metrics",
    "register",
]
