"""The errors of reference statistics and of the explainers fitted on them."""

from __future__ import annotations


class ReferenceMismatchError(ValueError):
    """Statistics used with a model, layer or embedding other than the ones they were computed with."""


class NotFittedError(RuntimeError):
    """Fitted state asked of an object that has not been fitted yet (as scikit-learn's ``NotFittedError``)."""
