"""The PolyAggregate CPU kernel (plugins/poly_aggregate/polyAggregateCpuKernel.cpp) and the
onnxruntime custom op that runs it (onnxruntime/polyAggregateOrtOp.cpp beside it, built by
plugins/CMakeLists.txt, which ``pom-deploy build-ops`` runs).

* The kernel, through its C ABI (g++ only, every machine): within ``error_bound`` of the float64
  oracle for every variant, mode, dtype, RoPE and frame case the CPU emulation runs; bit-identical
  whatever threads run its tasks and in which order; its error statuses.
* Finding and registering the library (every machine): a junk file is one error line.
* The custom op in onnxruntime: needs onnxruntime's C API header (``$ONNXRUNTIME_INCLUDE_DIR``,
  as for ``pom-deploy build-ops``), which no package here ships, so these tests skip
  without it (as in CI). With it: fused exports of a layer, the video model (full and step) and
  the DiT (RoPE 2-D, fp16) run with the kernel -- seen in onnxruntime's profile -- and agree with
  PyTorch; bad nodes and inputs are one-line errors.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from pom_deploy import export_onnx
from pom_deploy.errors import ExportError, ModelLoadError
from pom_deploy.exporters.verify import _verification_sessions
from pom_deploy.models.layers import PoMv2
from pom_deploy.models.zoo import create_zoo_model
from pom_deploy.ops import native_libraries, ort_ops
from pom_deploy.ops import poly_aggregate_abi as abi
from pom_deploy.runtime import load
from pom_deploy.runtime.onnxrt import OnnxRuntimeBackend
from test_plugin_poly_aggregate import (
    CPU_EXTENDED, SHAPES, SIDE_FLOAT32, _assert_close, _extended_id, _run_extended, host_emulation,
    nan_propagates_as_in_the_oracle, side_inputs_of,
)
from test_export_numerics import overflow_cases, overflow_layer  # noqa: F401 - overflow_layer: a fixture, found by name
from tolerances import FP16_RELATIVE_TO_PEAK, MODEL_ATOL

ROOT = Path(__file__).resolve().parents[1]
POLY_AGGREGATE = ROOT / "plugins" / "poly_aggregate"
ORT_INCLUDE = os.environ.get("ONNXRUNTIME_INCLUDE_DIR")


def _run(cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def kernel_lib(tmp_path_factory):
    """The kernel alone, built as plugins/CMakeLists.txt builds it (the flags its CMake gives)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found on PATH")
    library = tmp_path_factory.mktemp("cpu_kernel") / "libpom_poly_aggregate_cpu_kernel.so"
    _run(["g++", "-std=c++17", "-O3", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-fvisibility=hidden",
          POLY_AGGREGATE / "polyAggregateCpuKernel.cpp", "-o", library])
    return abi.load(str(library))


# ---------------------------------------------------------------- the kernel vs the oracle

@pytest.mark.parametrize("dtype", list(abi.DTYPES))
@pytest.mark.parametrize("mode", list(abi.MODES))
@pytest.mark.parametrize("variant", list(abi.VARIANTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-C{}-K{}".format(*s))
def test_kernel_matches_oracle(kernel_lib, shape, variant, mode, dtype):
    batch, tokens, channels, degree = shape
    x, coeff, mask = abi.make_inputs(zlib.crc32(repr((shape, variant, mode, dtype)).encode()), batch, tokens, channels,
                                     degree, variant, mode, dtype)
    y = abi.run_cpu_kernel(kernel_lib, x, degree, variant, mode, coeff, mask)
    assert y.dtype == x.dtype and y.shape == abi.output_shape(batch, tokens, channels, mode)
    _assert_close(y, x, degree, variant, mode, coeff, mask, dtype)


@pytest.mark.parametrize("case", host_emulation.extended_cases(CPU_EXTENDED), ids=_extended_id)
def test_kernel_rope_and_frames_match_oracle(kernel_lib, case):
    y, check = _run_extended(kernel_lib, case, abi.run_cpu_kernel)
    check(y)


@pytest.mark.parametrize("case", SIDE_FLOAT32, ids=_extended_id)
def test_kernel_reads_float32_side_inputs_under_16bit_x(kernel_lib, case):
    """coeff, mask, cos and sin in float32 under an fp16/bf16 x (values 16 bits cannot hold):
    within the bound of the oracle given the exact float32 values."""
    side_inputs_of(case)
    y, check = _run_extended(kernel_lib, case, abi.run_cpu_kernel)
    check(y)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", list(abi.MODES))
@pytest.mark.parametrize("variant", list(abi.VARIANTS))
def test_kernel_propagates_nan_as_the_oracle(kernel_lib, variant, mode, dtype):
    nan_propagates_as_in_the_oracle(kernel_lib, abi.run_cpu_kernel, variant, mode, dtype)


def test_masked_fractional_weights_empty_mask_and_no_tokens(kernel_lib):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 400, 8)).astype(np.float32)
    coeff = rng.uniform(-1, 1, (8, 2)).astype(np.float32)
    mask = rng.random((3, 400)).astype(np.float32)
    mask[1] = 0.0
    y = abi.run_cpu_kernel(kernel_lib, x, 2, "v2", "masked", coeff, mask)
    _assert_close(y, x, 2, "v2", "masked", coeff, mask, "float32")
    assert np.all(y[1] == 0.0)
    empty = np.zeros((2, 0, 4), np.float32)
    assert np.all(abi.run_cpu_kernel(kernel_lib, empty, 2, "v1", "mean") == 0.0)
    assert abi.run_cpu_kernel(kernel_lib, empty, 2, "v1", "causal").shape == (2, 0, 4)


def _thread_pool_parallel_for(order):
    """A PomParallelFor that runs the tasks on 2 real threads, in ``order`` ("reverse" or "forward")."""
    def parallel_for(pool, task, data, count):
        indices = range(count - 1, -1, -1) if order == "reverse" else range(count)
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:  # the GIL is released inside task
            list(executor.map(lambda i: task(data, i), indices))
        return 0
    return abi.PARALLEL_FOR(parallel_for)


# (batch, tokens, channels, degree, mode, frame_tokens, rope, dtype): step-graph chunks (few token
# tiles, so rows are cut into channel tiles) in every mode and fp16, long rows, frames, the
# token-level chain, RoPE.
THREAD_CASES = [(1, 256, 1024, 3, "mean", 0, "none", "float32"), (1, 300, 256, 2, "causal", 0, "none", "float16"),
                (1, 300, 256, 2, "masked", 0, "none", "float32"), (1, 512, 256, 2, "causal", 256, "none", "bfloat16"),
                (2, 1100, 96, 2, "masked", 0, "none", "float32"), (1, 1000, 64, 2, "causal", 200, "none", "float32"),
                (2, 700, 40, 3, "causal", 0, "none", "float32"), (1, 600, 32, 2, "causal", 0, "2d", "float32")]


@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_kernel_is_bit_identical_for_any_threads_and_order(kernel_lib, case, order):
    batch, tokens, channels, degree, mode, frame_tokens, rope, dtype = case
    x, coeff, mask = abi.make_inputs(3, batch, tokens, channels, degree, "v2", mode, dtype)
    cos, sin = abi.make_rope_tables(4, 1, tokens, channels, dtype) if rope != "none" else (None, None)
    options = dict(frame_tokens=frame_tokens, rope=rope, cos=cos, sin=sin)
    serial = abi.run_cpu_kernel(kernel_lib, x, degree, "v2", mode, coeff, mask, **options)
    threaded = abi.run_cpu_kernel(kernel_lib, x, degree, "v2", mode, coeff, mask, **options,
                                  parallel_for=_thread_pool_parallel_for(order))
    assert np.array_equal(serial, threaded)
    _assert_close(serial, x, degree, "v2", mode, coeff, mask, dtype, **options)


def test_kernel_error_statuses(kernel_lib):
    x, coeff, _ = abi.make_inputs(0, 1, 8, 4, 2, "v2", "mean", "float32")
    with pytest.raises(RuntimeError, match="v2 needs coeff"):
        abi.run_cpu_kernel(kernel_lib, x, 2, "v2", "mean")
    with pytest.raises(RuntimeError, match="degree must be in"):
        abi.run_cpu_kernel(kernel_lib, x, 17, "v1", "mean")
    failing = abi.PARALLEL_FOR(lambda pool, task, data, count: 1)
    with pytest.raises(RuntimeError, match="parallel loop given to the CPU kernel failed"):
        abi.run_cpu_kernel(kernel_lib, x, 2, "v2", "mean", coeff, parallel_for=failing)


# ---------------------------------------------------------------- finding and registering the library

# A file that says it was built for onnxruntime's C API 17 (what the op needs) but is no library.
JUNK_LIBRARY = b"not a shared library\0pom_deploy_build_info=1;onnxruntime_api=17\0"


def test_library_search_and_one_line_errors(tmp_path, monkeypatch):
    junk = tmp_path / ort_ops.LIBRARY_NAME
    junk.write_bytes(JUNK_LIBRARY)
    monkeypatch.setenv(ort_ops.ORT_OPS_ENV, str(tmp_path))
    assert ort_ops.find_ort_ops_library() == junk
    with pytest.raises(ModelLoadError, match="not found"):
        ort_ops.find_ort_ops_library(tmp_path / "missing.so")
    with pytest.raises(ModelLoadError) as error:
        ort_ops.register_ort_ops(ort.SessionOptions())
    assert "cannot load the custom-op library" in str(error.value) and "\n" not in str(error.value)
    junk.write_bytes(b"not a shared library, and no build record")
    with pytest.raises(ModelLoadError, match="records no onnxruntime C API version.*pom-deploy build-ops"):
        ort_ops.register_ort_ops(ort.SessionOptions())
    newer = int(ort.__version__.split(".")[1]) + 1
    junk.write_bytes(f"\0pom_deploy_build_info=1;onnxruntime_api={newer}\0".encode())
    with pytest.raises(ModelLoadError) as error:  # refused before onnxruntime is asked to load it
        ort_ops.register_ort_ops(ort.SessionOptions())
    assert f"built for onnxruntime's C API {newer}" in str(error.value) and "\n" not in str(error.value)
    monkeypatch.setenv(ort_ops.ORT_OPS_ENV, os.pathsep.join([str(tmp_path / "typo"), str(tmp_path)]))
    with pytest.raises(ModelLoadError, match="typo, which does not exist"):  # not silently skipped
        ort_ops.find_ort_ops_library()
    monkeypatch.setenv(ort_ops.ORT_OPS_ENV, "none")
    assert ort_ops.find_ort_ops_library() is None and ort_ops.register_ort_ops(ort.SessionOptions()) is None


def test_backend_registers_the_library_only_for_fused_graphs(tmp_path, monkeypatch):
    junk = tmp_path / ort_ops.LIBRARY_NAME
    junk.write_bytes(JUNK_LIBRARY)
    monkeypatch.setenv(ort_ops.ORT_OPS_ENV, str(junk))
    fused = export_onnx(PoMv2(16, 2, 2, 1, 4), tmp_path / "fused.onnx", fused_ops=True, verify=False)
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(relu, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "plain.onnx")
    assert OnnxRuntimeBackend(tmp_path / "plain.onnx").ort_ops_library is None  # no fused-ops metadata: never loaded
    assert OnnxRuntimeBackend(fused.path, ort_ops=False).ort_ops_library is None  # asked not to
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):  # not installed here: onnxruntime warns, runs on CPU
        gpu_first = OnnxRuntimeBackend(fused.path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu_first.ort_ops_library is None  # a GPU provider first keeps the nodes: no CPU kernel
    with pytest.raises(ModelLoadError, match="cannot load the custom-op library"):
        OnnxRuntimeBackend(fused.path)
    with pytest.raises(ExportError, match="cannot verify with the PolyAggregate CPU kernel"):
        _verification_sessions(fused.path, fused_ops=True)
    assert len(_verification_sessions(fused.path, fused_ops=False)) == 1  # not fused: the library is not looked for
    monkeypatch.setenv(ort_ops.ORT_OPS_ENV, "none")
    with pytest.raises(ModelLoadError, match="no CPU op library was found.*pom-deploy build-ops"):
        OnnxRuntimeBackend(fused.path, ort_ops=True)


# ---------------------------------------------------------------- the custom op in onnxruntime

@pytest.fixture(scope="module")
def ort_ops_library(tmp_path_factory):
    """The library built by ``pom-deploy build-ops`` against ``$ONNXRUNTIME_INCLUDE_DIR`` (the CPU
    op only: no CUDA here), into a folder of its own."""
    if not ORT_INCLUDE:
        pytest.skip("ONNXRUNTIME_INCLUDE_DIR not set: onnxruntime's C API header is needed to build the custom op")
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found on PATH")
    user_folder = tmp_path_factory.mktemp("user_lib")  # build-ops' default output, moved by $POM_DEPLOY_LIB_DIR
    _run([sys.executable, "-m", "pom_deploy.cli.deploy", "build-ops", "--no-cuda", "--onnxruntime-include", ORT_INCLUDE,
          "--jobs", "1"], env={**os.environ, "PYTHONPATH": str(ROOT), native_libraries.USER_LIBRARY_DIR_ENV: str(user_folder)})
    return user_folder / ort_ops.LIBRARY_NAME


def test_build_ops_output_is_found_and_records_the_header(ort_ops_library, tmp_path, monkeypatch):
    """With the header at hand, build-ops is the one step: the runtime finds the library in the
    user folder with no variable set, and it records the C API version of the header it was built with."""
    header = Path(ORT_INCLUDE) / "onnxruntime_c_api.h"
    api = re.search(r"^#define ORT_API_VERSION (\d+)", header.read_text(errors="replace"), re.MULTILINE).group(1)
    assert native_libraries.read_build_info(ort_ops_library) == {"onnxruntime_api": api}
    monkeypatch.delenv(ort_ops.ORT_OPS_ENV)
    monkeypatch.setenv(native_libraries.USER_LIBRARY_DIR_ENV, str(ort_ops_library.parent))
    assert ort_ops.find_ort_ops_library() == ort_ops_library
    fused = export_onnx(PoMv2(16, 2, 2, 1, 4), tmp_path / "fused.onnx", fused_ops=True, verify=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no slow-path warning: the kernel is found
        assert OnnxRuntimeBackend(fused.path).ort_ops_library == ort_ops_library


def _session(path, library, profile=False):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.enable_profiling = profile
    options.profile_file_prefix = str(Path(path).with_suffix(".profile"))  # next to the model, in tmp_path
    ort_ops.register_ort_ops(options, library)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ran_ops(session) -> set[str]:
    events = json.loads(Path(session.end_profiling()).read_text())
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


def test_layer_runs_the_kernel_and_matches_pytorch(tmp_path, ort_ops_library):
    layer = PoMv2(64, 3, 2, 1, 8).eval()
    with torch.no_grad():
        layer.po_coeff.uniform_(-0.5, 0.5)
    result = export_onnx(layer, tmp_path / "layer.onnx", fused_ops=True)
    session = _session(result.path, ort_ops_library, profile=True)
    x = torch.randn(2, 300, 64)
    actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    ops = _ran_ops(session)
    assert "PolyAggregate" in ops and "LeakyRelu" not in ops  # the kernel ran, not the inlined function
    with torch.no_grad():
        np.testing.assert_allclose(actual, layer(x).numpy(), atol=MODEL_ATOL, rtol=0)


@pytest.mark.parametrize("mask", ["padding", "causal"])
def test_masked_and_causal_layers_run_the_kernel(tmp_path, ort_ops_library, mask):
    layer = PoMv2(32, 2, 2, 1, 4).eval()
    with torch.no_grad():
        layer.po_coeff.uniform_(-0.5, 0.5)
    result = export_onnx(layer, tmp_path / "layer.onnx", mask=mask, fused_ops=True, verify=False)
    session = _session(result.path, ort_ops_library, profile=True)
    x = torch.randn(3, 40, 32)
    feeds = {"xq": x.numpy()}
    layer_mask = "causal"
    if mask == "padding":
        layer_mask = (torch.rand(3, 40) < 0.6).float()
        layer_mask[:, 0] = 1
        feeds["mask"] = layer_mask.numpy()
    actual = session.run(None, feeds)[0]
    assert "PolyAggregate" in _ran_ops(session)
    with torch.no_grad():
        np.testing.assert_allclose(actual, layer(x, mask=layer_mask).numpy(), atol=MODEL_ATOL, rtol=0)


def test_video_full_and_step_graphs_run_the_kernel(tmp_path, ort_ops_library, monkeypatch):
    monkeypatch.setenv(ort_ops.ORT_OPS_ENV, str(ort_ops_library))
    video = create_zoo_model("video_pom", frame_tokens=8, degree=3).eval()
    full = export_onnx(video, tmp_path / "v.onnx", fused_ops=True)  # verified with the bodies and the kernel
    assert any("PolyAggregate CPU kernel" in e.case for e in full.verification.errors)
    x = torch.randn(1, 32, video.in_proj.in_features)
    profiled = _session(full.path, ort_ops_library, profile=True)
    profiled.run(None, {"tokens": x.numpy()})
    ops = _ran_ops(profiled)
    assert "PolyAggregate" in ops and "LeakyRelu" not in ops
    session = load(full.path, device="cpu")
    assert "PolyAggregate CPU kernel" in session.backend.name
    with torch.no_grad():
        expected = video(x).numpy()
    np.testing.assert_allclose(session.run(**{full.spec.inputs[0].name: x.numpy()})[full.spec.outputs[0].name], expected,
                               atol=MODEL_ATOL, rtol=0)
    step = export_onnx(video, tmp_path / "v.step.onnx", step=True, fused_ops=True)
    stream = load(step.path, device="cpu")
    assert "PolyAggregate CPU kernel" in stream.backend.name
    chunks = [stream.step(x[:, i:i + 8].numpy()) for i in range(0, 32, 8)]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), expected, atol=MODEL_ATOL, rtol=0)


def test_dit_rope_fp16_graph_runs_the_kernel(tmp_path, ort_ops_library):
    dit = create_zoo_model("dit_pom")
    result = export_onnx(dit, tmp_path / "dit.onnx", precision="fp16", fused_ops=True, verify=False)
    session = _session(result.path, ort_ops_library, profile=True)
    image, t, label = torch.randn(3, 4, 10, 6), torch.rand(3) * 1000, torch.randint(0, 10, (3,))
    actual = session.run(None, {"image": image.half().numpy(), "timestep": t.half().numpy(), "class_label": label.numpy()})[0]
    assert "PolyAggregate" in _ran_ops(session)
    with torch.no_grad():
        expected = dit.double()(image.double(), t, label).numpy()
    assert np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max() <= FP16_RELATIVE_TO_PEAK


def test_fp16_kernel_on_outliers_and_padded_junk(tmp_path, ort_ops_library, overflow_layer):  # noqa: F811 - the fixture
    """The kernel side of test_export_numerics' overflow cases: finite and within the fp16 bound
    of the float32 model (the kernel computes features in float32, as the bodies now do)."""
    result = export_onnx(overflow_layer, tmp_path / "l.onnx", precision="fp16", mask="padding", fused_ops=True, verify=False)
    session = _session(result.path, ort_ops_library, profile=True)
    for name, feeds in overflow_cases():
        actual = session.run(None, {k: v.half().numpy() for k, v in feeds.items()})[0].astype(np.float64)
        with torch.no_grad():
            expected = overflow_layer(feeds["xq"], mask=feeds["mask"]).numpy()
        assert np.isfinite(actual).all(), name
        assert np.abs(actual - expected).max() / np.abs(expected).max() <= FP16_RELATIVE_TO_PEAK, name
    assert "PolyAggregate" in _ran_ops(session)


def _node_model(path, attributes, inputs):
    """One PolyAggregate node over float inputs of the given shapes."""
    names = [f"in{i}" for i in range(len(inputs))]
    node = helper.make_node("PolyAggregate", names, ["y"], domain="pom_deploy", **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(names, inputs)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("pom_deploy", 1)]), path)
    return path


def test_bad_nodes_and_inputs_are_one_line_errors(tmp_path, ort_ops_library):
    bad_mode = _node_model(tmp_path / "mode.onnx", {"variant": "v2", "degree": 2, "mode": "sideways"}, [[1, 4, 8], [8, 2]])
    with pytest.raises(Exception, match="unknown variant 'v2', mode 'sideways'"):
        _session(bad_mode, ort_ops_library)
    model = _node_model(tmp_path / "ok.onnx", {"variant": "v2", "degree": 2, "mode": "mean"}, [[1, None, 8], [None, 2]])
    session = _session(model, ort_ops_library)
    x = np.ones((1, 4, 8), np.float32)
    with pytest.raises(Exception, match=r"PolyAggregate: coeff must be \(8, 2\), got \(7, 2\)") as error:
        session.run(None, {"in0": x, "in1": np.ones((7, 2), np.float32)})
    assert "\n" not in str(error.value)
    empty = session.run(None, {"in0": np.ones((1, 0, 8), np.float32), "in1": np.ones((8, 2), np.float32)})[0]
    assert empty.shape == (1, 1, 8) and np.all(empty == 0)  # no tokens: onnxruntime passes null pointers
    assert session.run(None, {"in0": x, "in1": np.ones((8, 2), np.float32)})[0].shape == (1, 1, 8)
