"""Statistics files: named tensors and string metadata in ``.safetensors`` or ``.npz``, never a pickle.

Every file records its ``kind`` (the class that saved it) and ``whycam_format``, the version of this
layout; ``read_tensors`` refuses another kind, and a missing or other version, naming the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

#: The version of the file layout written by ``write_tensors`` and the only one ``read_tensors`` accepts.
FORMAT_VERSION = "1"


def write_tensors(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> Path:
    """Write named tensors and string metadata (with the format version) to ``.safetensors`` or ``.npz``."""
    path = Path(path)
    meta = {**{k: str(v) for k, v in meta.items()}, "whycam_format": FORMAT_VERSION}
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    elif path.suffix == ".npz":
        with path.open("wb") as handle:
            arrays = {k: v.numpy() for k, v in tensors.items()}
            np.savez(handle, **arrays, __meta__=np.array(json.dumps(meta)))
    else:
        raise ValueError(f"cannot tell the format of {path.name!r}: name it *.safetensors or *.npz")
    return path


def read_tensors(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read what ``write_tensors`` wrote: the tensors and the metadata (without ``kind`` and version).

    Refuses a file of another kind, and one whose format version is missing or not ``FORMAT_VERSION``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no statistics file at {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["__meta__"])) if "__meta__" in archive else {}
            tensors = {k: torch.from_numpy(archive[k].copy()) for k in archive.files if k != "__meta__"}
    else:
        raise ValueError(f"cannot tell the format of {path.name!r}: whycam reads *.safetensors and *.npz")
    if meta.get("kind") != kind:
        found = f"a {meta['kind']}" if "kind" in meta else "no whycam statistics"
        raise ValueError(f"{path.name} holds {found}, not a {kind}; load it with the class that saved it")
    version = meta.pop("whycam_format", None)
    if version != FORMAT_VERSION:
        written = "no format version" if version is None else f"format version {version!r}"
        raise ValueError(
            f"{path.name} has {written}, and this whycam reads version {FORMAT_VERSION!r} only; "
            "build the statistics again with this whycam (`whycam reference build`, or fit and save)"
        )
    meta.pop("kind")
    return tensors, meta
