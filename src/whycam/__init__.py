"""whycam: saliency maps for vision models, with DiffCAM at the centre."""

__version__ = "0.1.0"

from .data import load_images
from .layers import LayerNotFoundError
from .methods.base import CAMExplainer, Explainer, methods, register
from .methods.cam import CAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .models import load_model

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
    "load_images",
    "load_model",
    "methods",
    "register",
]
