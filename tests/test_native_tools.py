"""``pom-deploy build-ops`` where it cannot build (no header, no compiler, a wrong header), the
build records and the refusals they drive, ``pom-deploy doctor`` on this machine (no GPU, no
TensorRT) and with faked finds, and the one-time slow-path warning. The build itself, with a
header given, is tested in tests/test_cpu_kernel.py (its ``ort_ops_library`` fixture runs
build-ops; skipped without ``$ONNXRUNTIME_INCLUDE_DIR``)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import onnxruntime as ort
import pytest

from pom_deploy.cli import doctor_commands
from pom_deploy.cli.deploy import main
from pom_deploy.errors import ModelLoadError, PomDeployWarning
from pom_deploy.ops import native_build, native_libraries
from pom_deploy.ops.ort_ops import ORT_OPS_ENV
from pom_deploy.runtime import onnxrt
from pom_deploy.runtime.onnxrt import OnnxRuntimeBackend
from pom_deploy.tensorrt.plugins import PLUGIN_ENV
from test_engine_build import tiny_onnx

ORT_API = int(ort.__version__.split(".")[1])


def _record(path, **fields) -> str:
    """A file carrying a build record (what polyAggregateBuildInfo.cpp puts in a library)."""
    record = ";".join(f"{k}={v}" for k, v in fields.items())
    path.write_bytes(b"\x7fELF...\0pom_deploy_build_info=1;" + record.encode() + b"\0...")
    return str(path)


@pytest.fixture
def no_libraries(monkeypatch, tmp_path):
    """Nothing found anywhere and no header configured, whatever this checkout or user has built."""
    for name in (ORT_OPS_ENV, PLUGIN_ENV, "ONNXRUNTIME_INCLUDE_DIR", "ONNXRUNTIME_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(native_libraries, "search_folders", lambda: [tmp_path / "nowhere"])


@pytest.fixture(scope="module")
def fused_layer(tmp_path_factory):
    """A small graph with one PolyAggregate node and fused-ops metadata (no export needed here)."""
    return tiny_onnx(tmp_path_factory.mktemp("fused") / "fused.onnx", fused=True)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---------------------------------------------------------------- build-ops where it cannot build

def test_build_ops_without_a_header_says_which_to_give(no_libraries, capsys, tmp_path):
    """Offline or not, no header given: one line naming the three ways to give one (no download)."""
    assert main(["build-ops", "--no-cuda", "--output", str(tmp_path / "out")]) == 1
    line = _one_error_line(capsys)
    assert all(way in line for way in ("--onnxruntime-include", "ONNXRUNTIME_INCLUDE_DIR", "ONNXRUNTIME_ROOT"))
    assert not (tmp_path / "out").exists()


def test_build_ops_without_a_compiler(no_libraries, capsys, tmp_path, monkeypatch):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found on PATH")
    bin_dir = tmp_path / "bin"  # a PATH with cmake and no C++ compiler
    bin_dir.mkdir()
    (bin_dir / "cmake").symlink_to(shutil.which("cmake"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CXX", raising=False)
    assert main(["build-ops", "--no-cuda", "--output", str(tmp_path / "out")]) == 1
    assert "no C++ compiler found" in _one_error_line(capsys)


def test_build_ops_checks_the_header_it_is_given(no_libraries, capsys, tmp_path):
    include = tmp_path / "include"
    include.mkdir()
    assert main(["build-ops", "--no-cuda", "--onnxruntime-include", str(include)]) == 1
    assert "holds no onnxruntime_c_api.h" in _one_error_line(capsys)
    (include / "onnxruntime_c_api.h").write_text(f"#pragma once\n#define ORT_API_VERSION {ORT_API + 1}\n")
    assert main(["build-ops", "--no-cuda", "--onnxruntime-include", str(include)]) == 1
    assert f"declares ORT_API_VERSION {ORT_API + 1}" in _one_error_line(capsys)  # the library would be refused


def test_build_ops_plans_cuda_only_where_it_can(no_libraries, monkeypatch, tmp_path):
    """No nvcc: the CUDA parts are skipped with the reason; --arch without nvcc is an error; nvcc
    without a GPU builds nothing for CUDA unless --arch says for what; TensorRT's version is read
    from its header, TensorRT 11's indirection included."""
    include = tmp_path / "include"
    include.mkdir()
    (include / "onnxruntime_c_api.h").write_text(f"#define ORT_API_VERSION {ORT_API}\n")
    monkeypatch.setattr(native_build, "find_nvcc", lambda: None)
    plan = native_build.plan_build(tmp_path, onnxruntime_include=include)
    assert plan.libraries == [native_build.ORT_LIBRARY] and "nvcc not found" in plan.skipped[0]
    with pytest.raises(native_build.NativeBuildError, match="--arch given but nvcc not found"):
        native_build.plan_build(tmp_path, onnxruntime_include=include, arch="87")
    monkeypatch.setattr(native_build, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(native_build, "local_gpu_architectures", lambda: [])
    assert native_build.plan_build(tmp_path, onnxruntime_include=include).libraries == [native_build.ORT_LIBRARY]
    trt = tmp_path / "trt"
    trt.mkdir()
    (trt / "NvInferRuntime.h").write_text("")
    (trt / "NvInferVersion.h").write_text(
        "#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n"
        "#define TRT_PATCH_ENTERPRISE 0\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< major\n"
        "#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n"
    )
    plan = native_build.plan_build(tmp_path, onnxruntime=False, arch="87;90", tensorrt_include=trt)
    # with TensorRT's headers: the plugin library and the one that registers it on a plain dlopen
    assert plan.libraries == [native_build.CUDA_LIBRARY, native_build.AUTOREGISTER_LIBRARY] and plan.architectures == ["87", "90"]
    assert "-DCMAKE_CUDA_ARCHITECTURES=87;90" in native_build.cmake_arguments(plan, tmp_path / "b")
    assert native_build.tensorrt_header_version(trt) == "11.1.0"


# ---------------------------------------------------------------- build records

def test_build_records_drive_the_refusals(tmp_path):
    assert native_libraries.read_build_info(_record(tmp_path / "a.so", onnxruntime_api=17)) == {"onnxruntime_api": "17"}
    assert native_libraries.onnxruntime_problem(_record(tmp_path / "b.so", onnxruntime_api=ORT_API), ort.__version__) is None
    newer = native_libraries.onnxruntime_problem(_record(tmp_path / "c.so", onnxruntime_api=ORT_API + 1), ort.__version__)
    assert "newer than this onnxruntime" in newer and "pom-deploy build-ops" in newer
    plugin = _record(tmp_path / "p.so", tensorrt="10.3.0")
    assert native_libraries.tensorrt_problem(plugin, "10.7.0.23") is None  # same major: same plugin interfaces
    assert "built for TensorRT 10.3.0, this TensorRT is 11.1.0" in native_libraries.tensorrt_problem(plugin, "11.1.0")
    kernels_only = _record(tmp_path / "k.so", onnxruntime_api=ORT_API)
    assert "records no TensorRT version" in native_libraries.tensorrt_problem(kernels_only, "10.3.0")


# ---------------------------------------------------------------- doctor

def test_doctor_on_this_machine(no_libraries, capsys, fused_layer, monkeypatch):
    monkeypatch.setenv(ORT_OPS_ENV, "none")
    assert main(["doctor", "--json", str(fused_layer)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["onnxruntime"]["version"] == ort.__version__
    assert report["onnxruntime"]["providers"] == ort.get_available_providers()
    assert report["cuda"]["nvcc"] == native_build.find_nvcc()
    assert report["libraries"]["onnxruntime_op"]["path"] is None
    assert "pom-deploy build-ops" in report["libraries"]["onnxruntime_op"]["problem"]
    assert report["model"]["fused_nodes"] == 1 and report["model"]["runs_on"] == "function bodies"
    assert main(["doctor", str(fused_layer)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) <= 12 and out[-1].endswith("(CPU op library not found: build it with pom-deploy build-ops)")


def test_doctor_with_faked_finds(no_libraries, capsys, fused_layer, tmp_path, monkeypatch):
    """A Jetson-like machine: TensorRT 10.3, an Orin, both libraries built for it."""
    monkeypatch.setenv(ORT_OPS_ENV, _record(tmp_path / "libpom_deploy_ort_ops.so", onnxruntime_api=ORT_API))
    monkeypatch.setenv(PLUGIN_ENV, _record(tmp_path / "libpom_deploy_plugins.so", tensorrt="10.3.0"))
    monkeypatch.setattr(
        doctor_commands, "probe_tensorrt", lambda: {"version": "10.3.0", "where": "/usr/lib/python3/dist-packages/tensorrt"}
    )
    monkeypatch.setattr(doctor_commands, "probe_cuda", lambda: {"nvcc": "/usr/local/cuda/bin/nvcc", "nvcc_version": "12.6",
                                                                "gpus": [{"name": "Orin", "compute_capability": "8.7", "driver": "540.4"}]})
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(
        doctor_commands, "probe_onnxruntime", lambda: {"version": ort.__version__, "c_api": ORT_API, "providers": providers}
    )
    assert main(["doctor", "--json", str(fused_layer)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["libraries"]["cuda_plugin"]["built_for"] == {"tensorrt": "10.3.0"}
    assert report["libraries"]["cuda_plugin"]["problem"] is None and report["model"]["runs_on"] == "plugin"
    assert main(["doctor", str(fused_layer)]) == 0
    text = capsys.readouterr().out
    assert "Orin (sm_87)" in text and "TensorRT: 10.3.0" in text and "built for tensorrt 10.3.0): usable" in text
    monkeypatch.setattr(
        doctor_commands, "probe_onnxruntime", lambda: {"version": ort.__version__, "c_api": ORT_API, "providers": providers[1:]}
    )
    verdict = doctor_commands.gather(fused_layer)["model"]
    assert verdict["runs_on"] == "function bodies" and "--device cpu" in verdict["why"]  # CUDA first keeps the nodes
    monkeypatch.setattr(
        doctor_commands, "probe_onnxruntime", lambda: {"version": ort.__version__, "c_api": ORT_API, "providers": providers[2:]}
    )
    assert doctor_commands.gather(fused_layer)["model"]["runs_on"] == "kernel"
    monkeypatch.setattr(doctor_commands, "probe_tensorrt", lambda: {"version": "11.1.0", "where": "site-packages/tensorrt"})
    assert "built for TensorRT 10.3.0, this TensorRT is 11.1.0" in doctor_commands.gather()["libraries"]["cuda_plugin"]["problem"]


# ---------------------------------------------------------------- no silent slow path

def test_the_slow_path_warns_once_and_require_ops_refuses_it(no_libraries, fused_layer, monkeypatch, capsys):
    monkeypatch.setattr(onnxrt, "_slow_path_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OnnxRuntimeBackend(fused_layer)
        OnnxRuntimeBackend(fused_layer)
    slow = [w for w in caught if issubclass(w.category, PomDeployWarning)]
    assert len(slow) == 1 and "`pom-deploy build-ops`" in str(slow[0].message)
    monkeypatch.setattr(onnxrt, "_slow_path_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for the function bodies: no warning
        OnnxRuntimeBackend(fused_layer, ort_ops=False)
        monkeypatch.setenv(ORT_OPS_ENV, "none")
        OnnxRuntimeBackend(fused_layer)
    monkeypatch.delenv(ORT_OPS_ENV)
    with pytest.raises(ModelLoadError, match="pom-deploy build-ops"):
        OnnxRuntimeBackend(fused_layer, ort_ops=True)
    assert main(["run", str(fused_layer), "--input", os.devnull, "--require-ops"]) == 1
    assert "no CPU op library was found" in _one_error_line(capsys)


# ---------------------------------------------------------------- the wheel

def test_wheel_carries_the_built_library_and_the_runtime_finds_it(tmp_path):
    """``build-ops --into-package`` then ``python -m build --wheel``: the wheel holds the library
    (here a stand-in with a build record: the real one needs the header) and the native sources,
    is tagged for the platform, and the installed package finds the library with nothing set."""
    pytest.importorskip("build", reason="the build package (python -m build) is not installed")
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    shutil.copytree(root / "pom_deploy", tree / "pom_deploy", ignore=shutil.ignore_patterns("__pycache__", "lib"))
    shutil.copytree(root / "plugins", tree / "plugins", ignore=shutil.ignore_patterns("build"))
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(root / name, tree / name)
    (tree / "pom_deploy" / "lib").mkdir()
    _record(tree / "pom_deploy" / "lib" / "libpom_deploy_ort_ops.so", onnxruntime_api=ORT_API)
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist")],
                            cwd=tree, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    assert not wheel.name.endswith("-none-any.whl")  # carries a binary: tagged for the platform
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "installed")
    assert {"pom_deploy/lib/libpom_deploy_ort_ops.so", "pom_deploy/plugins_source/CMakeLists.txt",
            "pom_deploy/plugins_source/poly_aggregate/onnxruntime/polyAggregateOrtOp.cpp"} <= names
    probe = ("from pom_deploy.ops.ort_ops import find_ort_ops_library; from pom_deploy.ops.native_build import plugins_source; "
             "print(find_ort_ops_library()); print(plugins_source())")
    env = {k: v for k, v in os.environ.items() if k not in (ORT_OPS_ENV, "PYTHONPATH")}
    env.update(PYTHONPATH=str(tmp_path / "installed"), POM_DEPLOY_LIB_DIR=str(tmp_path / "empty_user_folder"))
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert found.returncode == 0, found.stderr[-2000:]
    package = tmp_path / "installed" / "pom_deploy"
    assert found.stdout.split() == [str(package / "lib" / "libpom_deploy_ort_ops.so"), str(package / "plugins_source")]
