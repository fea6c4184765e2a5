"""What reference statistics belong to: the model (a fingerprint of every weight), layer and embedding.

Statistics carry string metadata naming them, so that they are never used with another model, layer,
embedding or normalisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

from .errors import ReferenceMismatchError

#: Metadata that must agree between statistics and the explainer (or the statistics) using them.
IDENTITY = ("model", "layer", "embedding", "normalize")


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer of ``model``: names, dtypes, shapes and all bytes.

    The full bytes (BLAKE2b, about 0.1 s for ResNet-50's 100 MB) and not a few summary statistics:
    a fine-tuned model can keep per-tensor means and norms almost unchanged, and a false match
    would silently explain one model with another model's statistics.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_compatible(meta: Mapping[str, str], expected: Mapping[str, str], what: str = "the statistics") -> None:
    """Refuse, naming the key and both values, statistics whose identity differs from ``expected``.

    A key missing on either side (statistics built by hand with ``from_embeddings``) is not checked.
    """
    for key in IDENTITY:
        if key in meta and key in expected and meta[key] != expected[key]:
            fix = {
                "model": "compute the statistics with this model (fit again)",
                "layer": f"use layer={meta[key]!r}, or fit again on layer {expected[key]!r}",
                "embedding": f"use embedding={meta[key]!r}, or fit again",
                "normalize": f"use normalize={meta[key] == 'true'}, or fit again",
            }[key]
            raise ReferenceMismatchError(
                f"{what} were computed with {key} {meta[key]!r}, but are used with {key} {expected[key]!r}; {fix}"
            )
