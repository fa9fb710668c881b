"""One runtime API over onnxruntime (``.onnx``) and TensorRT (``.engine``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError
from .base import Backend
from .session import Session, StreamingSession


def open_backend(path: str | Path, device: str | None = None, **options) -> Backend:
    """The backend for a file, chosen by its kind: ONNX model or TensorRT engine."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.suffix == ".engine" or path.suffix == ".plan":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(path, **options)
    from .onnxrt import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, device=device, **options)


def load(path: str | Path, device: str | None = None, **options) -> Session | StreamingSession:
    """A ``StreamingSession`` for a step graph, a ``Session`` otherwise, on any backend.

    ``device``: None picks the best onnxruntime provider available (TensorRT, CUDA, CPU);
    "cpu", "cuda" or "tensorrt" ask for one.
    """
    backend = open_backend(path, device, **options)
    if backend.spec is not None and backend.spec.kind == "step":
        return StreamingSession(backend)
    return Session(backend)


__all__ = ["Session", "StreamingSession", "load", "open_backend"]
