"""One content digest for weights and stream states: sha256 over each tensor's name, dtype,
shape and bytes, in name order. Stored beside the data when it is saved, checked when it is
loaded, so that a flipped byte is refused instead of silently used (torch's and numpy's
readers do not check every byte)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """Hex sha256 of a mapping of names to torch tensors or numpy arrays."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        data, dtype, shape = _raw(tensors[name])
        digest.update(f"{name}\0{dtype}\0{shape}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _raw(value: Any) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """The tensor's bytes as a flat uint8 view (no copy of a contiguous tensor: the weights of a
    large model are hashed in place), its dtype and shape."""
    if isinstance(value, np.ndarray) or np.isscalar(value):
        array = np.ascontiguousarray(value)
        return array.reshape(-1).view(np.uint8), array.dtype.str, array.shape
    import torch  # a torch tensor: its bytes whatever its dtype (bf16 too)

    tensor = value.detach().cpu().contiguous()
    return tensor.reshape(-1).view(torch.uint8).numpy(), str(tensor.dtype), tuple(tensor.shape)
