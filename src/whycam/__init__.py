"""whycam: saliency maps for vision models, with DiffCAM at the centre."""

__version__ = "0.1.0"

from . import metrics
from .data import load_images
from .layers import LayerNotFoundError
from .methods.base import CAMExplainer, Explainer, methods, register
from .methods.cam import CAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .methods.diffcam import DiffCAM
from .methods.score import AblationCAM, ScoreCAM
from .models import load_model
from .reference import ReferenceBank, ReferenceStats

__all__ = [
    "AblationCAM",
    "CAM",
    "CAMExplainer",
    "DiffCAM",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LayerNotFoundError",
    "ReferenceBank",
    "ReferenceStats",
    "ScoreCAM",
    "XGradCAM",
    "__version__",
    "load_images",
    "load_model",
    "methods",
    "metrics",
    "register",
]
