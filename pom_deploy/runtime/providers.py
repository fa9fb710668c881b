"""Which onnxruntime execution providers to use, by what is installed and what was asked."""

from __future__ import annotations

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
