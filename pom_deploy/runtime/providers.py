"""Which onnxruntime execution providers to use, by what is installed and what was asked."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

from ..errors import BackendUnavailableError

# Fastest first: TensorRT EP, then CUDA, then CPU (always there).
PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
DEVICE_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


def select_providers(device: str | None, available: list[str]) -> list[str]:
    """Providers for ``device`` (None = best available; "cpu", "cuda", "tensorrt").

    Asking for a device whose provider is not installed is an error, not a silent CPU run.
    """
    if device is None:
        return [p for p in PREFERRED if p in available] or ["CPUExecutionProvider"]
    key = device.lower()
    if key not in DEVICE_PROVIDERS:
        raise BackendUnavailableError(f"unknown device {device!r}; expected one of: {', '.join(DEVICE_PROVIDERS)}")
    wanted = DEVICE_PROVIDERS[key]
    if wanted[0] not in available:
        raise BackendUnavailableError(
            f"device {device!r} needs onnxruntime's {wanted[0]}, which this onnxruntime lacks "
            f"(has: {', '.join(available)}); install pom-deploy[gpu] for CUDA"
        )
    return [p for p in wanted if p in available]


# onnxruntime's TensorRT EP option naming plugin libraries to load (";"-separated).
TRT_PLUGIN_OPTION = "trt_extra_plugin_lib_paths"
# Set by ``pom_deploy.tensorrt`` (a layer above): finds the PolyAggregate plugin library, or None.
_plugin_library_finder: Callable[[], Path | None] | None = None


def register_plugin_finder(finder: Callable[[], Path | None]) -> None:
    global _plugin_library_finder
    _plugin_library_finder = finder


def with_plugin_library(providers: list[str], fused_ops: bool, library: Path | None = None) -> list[Union[str, tuple[str, dict]]]:
    """``providers`` as given to onnxruntime: for a graph with PolyAggregate nodes, the TensorRT
    EP gets the plugin library (``library``, else the registered finder's) so that TensorRT can
    take the nodes as the plugin; unverified on a GPU (docs/tensorrt.md)."""
    if not fused_ops or "TensorrtExecutionProvider" not in providers:
        return list(providers)
    if library is None and _plugin_library_finder is not None:
        library = _plugin_library_finder()
    if library is None:
        return list(providers)
    return [(p, {TRT_PLUGIN_OPTION: str(library)}) if p == "TensorrtExecutionProvider" else p for p in providers]
