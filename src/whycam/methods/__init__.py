"""The method families; importing this package registers every explainer."""

from . import cam, diffcam, finer, gradient, kpca, legrad, perturbation, score, shapley  # noqa: F401
from .base import CAMExplainer, Explainer, methods, register
from .factory import create

__all__ = ["CAMExplainer", "Explainer", "create", "methods", "register"]
