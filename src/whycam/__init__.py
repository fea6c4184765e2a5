"""whycam: saliency maps for vision models, with DiffCAM at the centre."""

__version__ = "0.1.0"

from . import metrics
from .data import load_images
from .engines import build_reference, run_dataset, run_on_ray
from .errors import InputError, ModelError, ReferenceGroupError, UsageError, WhycamError
from .layers import LayerNotFoundError
from .methods.base import CAMExplainer, Explainer, methods, register
from .methods.cam import CAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .methods.diffcam import DiffCAM
from .methods.factory import create
from .methods.finer import FinerCAM, FinerTarget
from .methods.gradient import (
    Deconvnet,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from .methods.kpca import KPCACAM
from .methods.legrad import LeGrad
from .methods.perturbation import RISE, MeaningfulPerturbation, Occlusion
from .methods.score import AblationCAM, ScoreCAM
from .methods.shapley import ShapleyCAM
from .methods.visualize import visualize_class
from .models import load_model
from .reference import ReferenceBank, ReferenceStats
from .runs import BatchResult, ExplainResult, Runner, explain
from .shards import load_run

__all__ = [
    "BatchResult",
    "build_reference",
    "load_run",
    "run_dataset",
    "run_on_ray",
    "explain",
    "Runner",
    "ExplainResult",
    "create",
    "WhycamError",
    "UsageError",
    "ReferenceGroupError",
    "ModelError",
    "InputError",
    "AblationCAM",
    "CAM",
    "CAMExplainer",
    "Deconvnet",
    "DiffCAM",
    "EigenCAM",
    "Explainer",
    "FinerCAM",
    "FinerTarget",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "KPCACAM",
    "LayerCAM",
    "LayerNotFoundError",
    "LeGrad",
    "MeaningfulPerturbation",
    "Occlusion",
    "RISE",
    "ReferenceBank",
    "ReferenceStats",
    "Saliency",
    "ScoreCAM",
    "ShapleyCAM",
    "SmoothGrad",
    "XGradCAM",
    "__version__",
    "load_images",
    "load_model",
    "methods",
    "metrics",
    "register",
    "visualize_class",
]
