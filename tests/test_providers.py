"""onnxruntime execution-provider selection (pure logic: the available list is passed in)."""

import pytest

from pom_deploy.errors import BackendUnavailableError, PomDeployError
from pom_deploy.runtime.providers import select_providers

CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("available, expected", [
    (CPU, CPU),
    (CUDA, CUDA),
    (ALL, ALL),
    (list(reversed(ALL)), ALL),  # fastest first, whatever onnxruntime's order
    (["AzureExecutionProvider", "CPUExecutionProvider"], CPU),  # providers we do not use are left out
    ([], CPU),
])
def test_default_is_best_available(available, expected):
    assert select_providers(None, available) == expected


@pytest.mark.parametrize("device, available, expected", [
    ("cpu", ALL, CPU),
    ("CPU", ALL, CPU),
    ("cuda", ALL, CUDA),
    ("cuda", CUDA, CUDA),
    ("tensorrt", ALL, ALL),
    ("TensorRT", ["TensorrtExecutionProvider", "CPUExecutionProvider"], ["TensorrtExecutionProvider", "CPUExecutionProvider"]),
])
def test_explicit_device(device, available, expected):
    assert select_providers(device, available) == expected


@pytest.mark.parametrize("device, available, message", [
    ("cuda", CPU, "CUDAExecutionProvider"),
    ("tensorrt", CUDA, "TensorrtExecutionProvider"),
])
def test_missing_provider_is_an_error_not_a_silent_cpu_run(device, available, message):
    with pytest.raises(BackendUnavailableError, match=message) as info:
        select_providers(device, available)
    assert "\n" not in str(info.value) and "has: " in str(info.value)


def test_unknown_device():
    with pytest.raises(PomDeployError, match="unknown device 'tpu'.*cpu, cuda, tensorrt"):
        select_providers("tpu", ALL)
