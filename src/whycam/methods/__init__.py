"""The method families; importing this package registers every explainer."""

from . import cam, diffcam, gradient, perturbation, score, transformer  # noqa: F401
from .base import CAMExplainer, Explainer, methods, register

__all__ = ["CAMExplainer", "Explainer", "methods", "register"]
