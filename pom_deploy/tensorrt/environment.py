"""Is TensorRT here, which version, which GPU. Imports TensorRT lazily.

Without TensorRT every TensorRT entry point raises ``BackendUnavailableError`` with
``INSTALL_HINT`` (one line); nothing in pom-deploy imports TensorRT at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import BackendUnavailableError

INSTALL_HINT = (
    "TensorRT is not installed: install it with `pip install 'pom-deploy[trt]'` (tensorrt>=10.3 and polygraphy; "
    "on Jetson use JetPack's python3-libnvinfer) on a machine with an NVIDIA GPU; "
    "the ONNX paths (onnxruntime) keep working without it"
)


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or one clear error saying what to install."""
    try:
        import tensorrt
    except Exception:  # ImportError, or a broken install failing to load libnvinfer
        raise BackendUnavailableError(INSTALL_HINT) from None
    try:
        importlib.import_module("polygraphy.backend.trt")
    except Exception:
        raise BackendUnavailableError(INSTALL_HINT.replace("TensorRT is not installed", "Polygraphy is not installed")) from None
    return tensorrt


def tensorrt_available() -> bool:
    try:
        require_tensorrt()
    except BackendUnavailableError:
        return False
    return True


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; non-numeric tails are dropped."""
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def gpu_info() -> dict[str, str]:
    """Name and compute capability (``"8.7"``) of the current CUDA device."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return {"gpu_name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    return _gpu_info_cudart()


def _gpu_info_cudart() -> dict[str, str]:
    """Same through the CUDA runtime that Polygraphy loads (no torch with CUDA needed)."""
    import ctypes

    from polygraphy import cuda

    lib = cuda.wrapper().handle
    device = ctypes.c_int(0)
    lib.cudaGetDevice(ctypes.byref(device))
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device)  # cudaDevAttrComputeCapabilityMajor
    lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device)  # cudaDevAttrComputeCapabilityMinor
    props = ctypes.create_string_buffer(8192)  # cudaDeviceProp starts with char name[256]
    getter = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
    name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace") if getter(props, device) == 0 else "unknown GPU"
    return {"gpu_name": name, "compute_capability": f"{major.value}.{minor.value}"}


def current_environment() -> dict[str, str]:
    """What an engine sidecar is checked against: TensorRT version, GPU, compute capability."""
    trt = require_tensorrt()
    return {"tensorrt_version": trt.__version__, **gpu_info()}
