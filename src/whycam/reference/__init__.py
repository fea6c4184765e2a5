"""Reference statistics for DiffCAM, by concept: ``statistics`` (a group's streaming, mergeable
sufficient statistics and their shrunk covariance), ``bank`` (one group per class), ``identity``
(the model, layer and embedding statistics belong to), ``io`` (versioned files) and ``errors``."""

from .bank import Label, ReferenceBank
from .errors import NotFittedError, ReferenceMismatchError
from .identity import IDENTITY, check_compatible, model_fingerprint
from .io import FORMAT_VERSION, read_tensors, write_tensors
from .statistics import ReferenceStats, Shrinkage, Shrunk, nearest_solve, parse_shrinkage, shrinkage_coefficients

__all__ = [
    "FORMAT_VERSION",
    "IDENTITY",
    "Label",
    "NotFittedError",
    "ReferenceBank",
    "ReferenceMismatchError",
    "ReferenceStats",
    "Shrinkage",
    "Shrunk",
    "check_compatible",
    "model_fingerprint",
    "nearest_solve",
    "parse_shrinkage",
    "read_tensors",
    "shrinkage_coefficients",
    "write_tensors",
]
