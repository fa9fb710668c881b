"""One runtime API over every registered backend: onnxruntime (``.onnx``) here, TensorRT
(``.engine``) from ``pom_deploy.tensorrt``, which registers itself when the package loads."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError
from . import onnxrt  # noqa: F401 - imported to register the onnxruntime backend
from .base import BACKENDS, Backend, backend_class, register_backend
from .session import Session, StreamingSession

DEFAULT_BACKEND = "onnxruntime"  # any file no backend claims by suffix is read as ONNX


def open_backend(path: str | Path, device: str | None = None, kind: str | None = None, **options) -> Backend:
    """The backend for a file: ``kind`` (a key of ``BACKENDS``) when given, else the one that
    claims the file's suffix (``.engine``/``.plan``: TensorRT), else onnxruntime."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    return backend_class(path, kind, DEFAULT_BACKEND)(path, device=device, **options)


def load(path: str | Path, device: str | None = None, **options) -> Session | StreamingSession:
    """A ``StreamingSession`` for a step graph, a ``Session`` otherwise, on any backend.

    ``device``: None picks the best available (for ONNX: TensorRT, CUDA, CPU provider);
    "cpu", "cuda" or "tensorrt" ask for one, and a backend that cannot honour it says so.
    """
    backend = open_backend(path, device, **options)
    if backend.spec is not None and backend.spec.kind == "step":
        return StreamingSession(backend)
    return Session(backend)


__all__ = ["BACKENDS", "Session", "StreamingSession", "load", "open_backend", "register_backend"]
