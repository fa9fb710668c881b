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


def test_tensorrt_ep_gets_the_plugin_library_for_fused_graphs(tmp_path, monkeypatch):
    from pom_deploy.runtime.providers import TRT_PLUGIN_OPTION, with_plugin_library
    from pom_deploy.tensorrt.plugins import PLUGIN_ENV

    library = tmp_path / "libpom_deploy_plugins.so"
    assert with_plugin_library(ALL, True, library) == [("TensorrtExecutionProvider", {TRT_PLUGIN_OPTION: str(library)}), *ALL[1:]]
    assert with_plugin_library(ALL, False, library) == ALL  # no PolyAggregate node: nothing to load
    assert with_plugin_library(CUDA, True, library) == CUDA
    library.write_bytes(b"")
    monkeypatch.setenv(PLUGIN_ENV, str(library))  # the finder pom_deploy.tensorrt registers
    assert with_plugin_library(ALL, True)[0] == ("TensorrtExecutionProvider", {TRT_PLUGIN_OPTION: str(library)})
