"""PolyAggregate CUDA kernels and TensorRT plugin: the checks that need no GPU.

* The kernels compile for every target architecture (one CMake/nvcc build, cached per session).
* The CPU emulation -- same blocking and float32 accumulation order as the kernels, same
  feature code (polyAggregateMath.cuh) -- matches the float64 oracle for every mode, variant,
  dtype and odd shapes.
* The kernel source itself, compiled by g++ against a host emulation of CUDA
  (plugins/tests/cuda_host: blocks of real threads, __syncthreads on a barrier), matches the CPU
  emulation bit for bit, runs clean under AddressSanitizer, and stays bit-identical with blocks
  running concurrently in several processes.
* With TensorRT headers (env TENSORRT_INCLUDE_DIR, or tags of a NVIDIA/TensorRT git mirror),
  the plugin compiles and its build-time methods pass a host-side test program; built against
  the host emulation, that program also runs the plugin's enqueue.
* The builds with other tuning constants that the GPU check benchmarks are correct too; the GPU
  check's build stage runs (--build-only) and its Python script runs end to end on the host
  emulation (--emulated).

GPU checks live in scripts/gpu_check.sh (docs/gpu_check.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import kernel_test_architectures, nvcc_version
from pom_deploy.dtypes import by_name
from pom_deploy.ops import poly_aggregate_abi as abi
from pom_deploy.ops.poly_aggregate import error_bound, poly_aggregate

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
POLY_AGGREGATE = PLUGINS / "poly_aggregate"
CUDA_HOST = PLUGINS / "tests" / "cuda_host"
sys.path.insert(0, str(CUDA_HOST))
sys.path.insert(0, str(ROOT / "scripts" / "gpu_check"))
import check_poly_aggregate as gpu_check  # noqa: E402 - imported after sys.path gains the sibling scripts' folders
import compare_with_cpu_emulation as host_emulation  # noqa: E402 - imported after sys.path gains the sibling scripts' folders

# A git mirror of NVIDIA/TensorRT (its tags give each version's headers); no default location.
TRT_MIRROR = Path(os.environ["POM_TENSORRT_MIRROR"]) if os.environ.get("POM_TENSORRT_MIRROR") else None
OLDEST_TENSORRT_TAG = "v10.3.0"  # JetPack 6 (Jetson Orin)


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found on PATH")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def plugin_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pom_plugins")


@pytest.fixture(scope="session")
def emulation_lib(plugin_tmp):
    _require("g++")
    return abi.load(str(_build_cpu_emulation(plugin_tmp / "libpom_poly_aggregate_cpu_emulation.so")))


def _build_cpu_emulation(library: Path, *flags: str) -> Path:
    _run(["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-fvisibility=hidden",
          *flags, "-I", str(POLY_AGGREGATE), str(PLUGINS / "tests" / "polyAggregateCpuEmulation.cpp"), "-o", str(library)])
    return library


def _build_host_emulated_kernels(library: Path, *flags: str) -> Path:
    """polyAggregateKernel.cu compiled as C++ against the CUDA host emulation."""
    _run(["g++", "-std=c++20", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas", "-shared", "-fPIC",
          "-fvisibility=hidden", "-pthread", *flags, "-I", str(CUDA_HOST), "-I", str(POLY_AGGREGATE),
          "-x", "c++", str(POLY_AGGREGATE / "polyAggregateKernel.cu"), "-o", str(library)])
    return library


SANITIZERS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer")


@pytest.fixture(scope="session")
def host_kernels(plugin_tmp):
    """The CUDA kernels' source, compiled by g++ against the host emulation (no GPU)."""
    _require("g++")
    return abi.load(str(_build_host_emulated_kernels(plugin_tmp / "libpom_poly_aggregate_host.so")))


@pytest.fixture(scope="session")
def host_kernels_sanitized(plugin_tmp) -> Path:
    """The same, built with AddressSanitizer and UBSan (a library path: loaded by subprocesses)."""
    _require("g++")
    return _build_host_emulated_kernels(plugin_tmp / "libpom_poly_aggregate_host_asan.so", *SANITIZERS)


@pytest.fixture(scope="session")
def kernel_build(background_kernel_build) -> dict:
    """CMake build of the kernels + C ABI library for conftest.kernel_test_architectures() (no
    TensorRT), started in the background (tests/conftest.py)."""
    print(f"\nkernel library built in {background_kernel_build['seconds']:.0f} s (in the background)")
    return background_kernel_build


# ---------------------------------------------------------------- CPU emulation vs oracle

# (batch, tokens, channels, degree): N = 1; odd channels and K = C; tokens that are not a
# multiple of the scan chunk (128) or reduce split (256); the largest degree; K = 1; a long
# sequence (157 chained scan chunks, 79 reduce splits).
SHAPES = [(2, 1, 6, 3), (1, 257, 5, 5), (2, 300, 12, 2), (1, 700, 32, 16), (3, 130, 7, 1), (1, 20001, 4, 2)]


def _as64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _assert_close(actual, x, degree, variant, mode, coeff, mask, dtype, frame_tokens=0, rope="none", cos=None,
                  sin=None):
    """Within ``error_bound`` of the float64 oracle: the worst case of any implementation with
    float32 features, rotation and sums (any order, any thread count), rounded once to ``dtype``."""
    args = (_as64(x), degree, variant, mode, _as64(coeff), _as64(mask))
    options = {"frame_tokens": frame_tokens, "rope": rope, "cos": _as64(cos), "sin": _as64(sin)}
    expected, bound = poly_aggregate(*args, **options), error_bound(*args, dtype=dtype, **options)
    error = np.abs(np.asarray(actual, dtype=np.float64) - expected)
    assert np.all(error <= bound), f"max error / bound {float((error / bound).max()):.3g}"


@pytest.mark.parametrize("dtype", list(abi.DTYPES))
@pytest.mark.parametrize("mode", list(abi.MODES))
@pytest.mark.parametrize("variant", list(abi.VARIANTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-C{}-K{}".format(*s))
def test_cpu_emulation_matches_oracle(emulation_lib, shape, variant, mode, dtype):
    batch, tokens, channels, degree = shape
    seed = zlib.crc32(repr((shape, variant, mode, dtype)).encode())
    x, coeff, mask = abi.make_inputs(seed, batch, tokens, channels, degree, variant, mode, dtype)
    y = abi.run_cpu_emulation(emulation_lib, x, degree, variant, mode, coeff, mask)
    assert y.dtype == x.dtype and y.shape == abi.output_shape(batch, tokens, channels, mode)
    _assert_close(y, x, degree, variant, mode, coeff, mask, dtype)


# RoPE and block-causal cases, [batch, tokens, channels, degree, frame_tokens, rope, batch of the
# cos/sin tables]; each runs every dtype, RoPE for v2, frames in mode causal
# (compare_with_cpu_emulation.extended_cases).
EXTENDED = [
    [2, 300, 16, 2, 0, "1d", 2],  # tables per batch row, 4-wide vectors of pairs
    [1, 257, 8, 3, 0, "2d", 1],  # 2d with Q = 2, tokens off the 128/256 blocking
    [2, 600, 128, 2, 0, "2d", 2],  # two column tiles, row and column halves
    [1, 130, 4, 8, 0, "1d", 1],  # the largest RoPE degree, scalar columns
    [2, 1, 8, 1, 0, "2d", 2],  # one token
    [2, 300, 12, 2, 60, "none", 1],  # frames off the 128/256 blocking
    [1, 768, 15, 3, 256, "none", 1],  # frames of exactly one reduce split, odd C
    [2, 600, 8, 2, 600, "none", 1],  # one frame of three splits (the mean, repeated)
    [1, 700, 5, 5, 1, "none", 1],  # 700 one-token frames (plain causal)
    [2, 1000, 24, 2, 200, "2d", 1],  # RoPE, frames that straddle split boundaries
    [2, 520, 16, 2, 8, "1d", 2],  # RoPE, 65 short frames
]
# The CPU emulation also runs a 157-chunk causal chain with RoPE and 10 frames of 8 splits.
CPU_EXTENDED = EXTENDED + [[1, 20001, 4, 2, 0, "1d", 1], [1, 20000, 4, 2, 2000, "2d", 1]]


def _extended_id(case) -> str:
    (batch, tokens, channels, degree), variant, mode, dtype, options = case
    sides = f"-sides{options['side_dtype']}" if options.get("side_dtype") else ""
    return (f"B{batch}-N{tokens}-C{channels}-K{degree}-F{options['frame_tokens']}-rope{options['rope']}"
            f"-tables{options['table_batch']}-{variant}-{mode}-{dtype}{sides}")


def _run_extended(lib, case, runner):
    """Run one extended case with `runner` (abi.run_cpu_emulation or abi.run_host_launch); (output, its check)."""
    shape, variant, mode, dtype, options = case
    x, coeff, mask = host_emulation.inputs_for(shape, variant, mode, dtype, **options)
    cos, sin = host_emulation.tables_for(shape, variant, mode, dtype, **options)
    extra = {"frame_tokens": options["frame_tokens"], "rope": options["rope"], "cos": cos, "sin": sin}
    y = runner(lib, x, shape[3], variant, mode, coeff, mask, **extra)
    return y, lambda actual: _assert_close(actual, x, shape[3], variant, mode, coeff, mask, dtype, **extra)


@pytest.mark.parametrize("case", host_emulation.extended_cases(CPU_EXTENDED), ids=_extended_id)
def test_cpu_emulation_rope_and_frames_match_oracle(emulation_lib, case):
    y, check = _run_extended(emulation_lib, case, abi.run_cpu_emulation)
    (batch, tokens, channels, _), _, mode, _, _ = case
    assert y.shape == abi.output_shape(batch, tokens, channels, mode)
    check(y)


def test_masked_fractional_weights_and_empty_mask(emulation_lib):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 400, 8)).astype(np.float32)
    mask = rng.random((3, 400)).astype(np.float32)
    mask[1] = 0.0  # sum of the mask is 0: output 0, not NaN
    y = abi.run_cpu_emulation(emulation_lib, x, 2, "v1", "masked", mask=mask)
    assert np.all(y[1] == 0.0)
    _assert_close(y, x, 2, "v1", "masked", None, mask, "float32")


def nan_propagates_as_in_the_oracle(lib, runner, variant: str, mode: str, dtype: str) -> None:
    """NaN in a few x entries (and, for v2, out of the activation's clamp range around them):
    the outputs that are NaN are exactly the oracle's, so a NaN is never turned into a number
    (fmaxf(NaN, -0.1) is -0.1) nor spread where the oracle has none."""
    batch, tokens, channels, degree = 2, 300, 12, 3
    x, coeff, mask = abi.make_inputs(11, batch, tokens, channels, degree, variant, mode, dtype)
    x = x.copy()
    x[0, 5, 1] = np.nan
    x[1, 250, 7] = np.nan
    x[0, 6, 2], x[1, 251, 8] = -1e4, 1e4  # clamped to -0.1 and 6 (v2): clamping still works
    y = runner(lib, x, degree, variant, mode, coeff, mask)
    expected = poly_aggregate(_as64(x), degree, variant, mode, _as64(coeff), _as64(mask))
    nan = np.isnan(np.asarray(y, dtype=np.float64))
    assert nan.any() and not nan.all()
    assert np.array_equal(nan, np.isnan(expected)), f"{int((nan != np.isnan(expected)).sum())} NaN positions differ"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", list(abi.MODES))
@pytest.mark.parametrize("variant", list(abi.VARIANTS))
def test_nan_propagates_in_cpu_emulation_and_kernel_source(emulation_lib, host_kernels, variant, mode, dtype):
    nan_propagates_as_in_the_oracle(emulation_lib, abi.run_cpu_emulation, variant, mode, dtype)
    nan_propagates_as_in_the_oracle(host_kernels, abi.run_host_launch, variant, mode, dtype)


def test_empty_token_axis(emulation_lib):
    x = np.zeros((2, 0, 4), dtype=np.float32)
    assert np.all(abi.run_cpu_emulation(emulation_lib, x, 2, "v1", "mean") == 0.0)
    assert abi.run_cpu_emulation(emulation_lib, x, 2, "v1", "causal").shape == (2, 0, 4)


@pytest.mark.parametrize(
    ("desc", "status"),
    [
        (abi.make_desc(2, 8, 6, 4, "v1", "mean", "float32"), -8),  # 6 % 4 != 0
        (abi.make_desc(2, 8, 6, 0, "v2", "mean", "float32"), -2),
        (abi.make_desc(2, 8, 6, abi.MAX_DEGREE + 1, "v2", "mean", "float32"), -2),
        (abi.Desc(2, 8, 6, 2, 3, 0, 0), -3),
        (abi.Desc(2, 8, 6, 2, 1, 5, 0), -4),
        (abi.Desc(2, 8, 6, 2, 1, 0, 9), -5),
        (abi.Desc(-1, 8, 6, 2, 1, 0, 0), -1),
        (abi.Desc(2, 8, 8, 2, 2, 0, 0, 0, 3), -9),  # rope 3
        (abi.make_desc(2, 8, 6, 2, "v2", "mean", "float32", rope="2d"), -10),  # 6 % 4 != 0
        (abi.make_desc(2, 8, 7, 1, "v2", "mean", "float32", rope="1d"), -10),
        (abi.make_desc(2, 8, 8, 2, "v1", "mean", "float32", rope="1d"), -11),  # RoPE kernels are v2's
        (abi.make_desc(2, 8, 8, abi.MAX_ROPE_DEGREE + 1, "v2", "mean", "float32", rope="1d"), -11),
        (abi.make_desc(2, 8, 8, 2, "v2", "mean", "float32", frame_tokens=4), -12),  # frames need causal
        (abi.make_desc(2, 8, 8, 2, "v2", "causal", "float32", frame_tokens=-1), -12),
        (abi.make_desc(2, 8, 8, 2, "v2", "causal", "float32", frame_tokens=3), -13),  # 8 % 3 != 0
    ],
)
def test_validation_errors(emulation_lib, desc, status):
    import ctypes

    assert emulation_lib.pomPolyAggregateValidate(ctypes.byref(desc)) == status
    assert emulation_lib.pomPolyAggregateWorkspaceSize(ctypes.byref(desc)) == 0
    assert emulation_lib.pomPolyAggregateStatusString(status)


def test_missing_inputs_are_reported(emulation_lib):
    x = np.ones((1, 4, 4), dtype=np.float32)
    coeff = np.ones((4, 2), dtype=np.float32)
    with pytest.raises(RuntimeError, match="coeff"):
        abi.run_cpu_emulation(emulation_lib, x, 2, "v2", "mean")
    with pytest.raises(RuntimeError, match="mask"):
        abi.run_cpu_emulation(emulation_lib, x, 2, "v1", "masked")
    with pytest.raises(RuntimeError, match="cos and sin"):  # through the original entry point
        abi.run_cpu_emulation(emulation_lib, x, 2, "v2", "mean", coeff, rope="1d")
    with pytest.raises(RuntimeError, match="cos and sin"):  # through the Ex entry point, sin missing
        abi.run_cpu_emulation(emulation_lib, x, 2, "v2", "mean", coeff, rope="1d", cos=np.ones((1, 4, 2), dtype=np.float32))


def test_workspace_grows_with_shape_and_stays_small(emulation_lib):
    import ctypes

    def size(batch, tokens, channels, mode, **options):
        desc = abi.make_desc(batch, tokens, channels, 2, "v2", mode, "float16", **options)
        return emulation_lib.pomPolyAggregateWorkspaceSize(ctypes.byref(desc))

    for mode in abi.MODES:
        for rope in abi.ROPES:
            assert 0 < size(1, 100, 64, mode, rope=rope) <= size(4, 16384, 2048, mode, rope=rope)
    assert 0 < size(1, 256, 64, "causal", frame_tokens=256) <= size(4, 16384, 2048, "causal", frame_tokens=256)
    # The benchmark shape: scratch stays a few percent of x (256 MiB in fp16).
    x_bytes = 4 * 16384 * 2048 * 2
    assert size(4, 16384, 2048, "mean") < 0.05 * x_bytes
    assert size(4, 16384, 2048, "causal") < 0.15 * x_bytes
    assert size(4, 16384, 2048, "causal", rope="2d") < 0.15 * x_bytes
    assert size(4, 16384, 2048, "causal", frame_tokens=256) < 0.05 * x_bytes


# ---------------------------------------------------------------- kernel source on the host emulation

# The CPU-emulation shapes plus one where fp16/bf16 take 8-wide (16-byte) vectors.
HOST_SHAPES = SHAPES + [(2, 600, 64, 2)]


@pytest.mark.parametrize("order", ["forward", "reverse"])
@pytest.mark.parametrize("dtype", list(abi.DTYPES))
@pytest.mark.parametrize("mode", list(abi.MODES))
@pytest.mark.parametrize("variant", list(abi.VARIANTS))
@pytest.mark.parametrize("shape", HOST_SHAPES, ids=lambda s: "B{}-N{}-C{}-K{}".format(*s))
def test_kernel_source_on_host_emulation(host_kernels, emulation_lib, shape, variant, mode, dtype, order, monkeypatch):
    """Threads run from barrier to barrier in both orders: a missing __syncthreads shows in one."""
    monkeypatch.setenv("POM_CUDA_HOST_THREAD_ORDER", order)
    problem, y = host_emulation.compare_case(host_kernels, emulation_lib, shape, variant, mode, dtype)
    assert problem is None, problem
    x, coeff, mask = host_emulation.inputs_for(shape, variant, mode, dtype)
    _assert_close(y, x, shape[3], variant, mode, coeff, mask, dtype)


@pytest.mark.parametrize("order", ["forward", "reverse"])
@pytest.mark.parametrize("case", host_emulation.extended_cases(EXTENDED), ids=_extended_id)
def test_kernel_source_rope_and_frames_on_host_emulation(host_kernels, emulation_lib, case, order, monkeypatch):
    """RoPE (pairs owned by one thread, tables per batch row or shared) and block-causal (frame
    splits, scan, broadcast): the kernels' source == the CPU emulation bit for bit, and the oracle."""
    monkeypatch.setenv("POM_CUDA_HOST_THREAD_ORDER", order)
    shape, variant, mode, dtype, options = case
    problem, y = host_emulation.compare_case(host_kernels, emulation_lib, shape, variant, mode, dtype, **options)
    assert problem is None, problem
    _run_extended(emulation_lib, case, abi.run_cpu_emulation)[1](y)


@pytest.mark.parametrize("mode", list(abi.MODES))
def test_kernel_source_misaligned_input_falls_back_to_scalar_loads(host_kernels, emulation_lib, mode):
    # The emulation fails a launch whose vector loads are not aligned, as the GPU would.
    for dtype in ("float16", "bfloat16"):
        problem, _ = host_emulation.compare_case(host_kernels, emulation_lib, (2, 300, 16, 2), "v1", mode, dtype, offset=True)
        assert problem is None, problem
        # cos/sin one element off (x aligned): the tables' loads fall back too.
        problem, _ = host_emulation.compare_case(host_kernels, emulation_lib, (2, 300, 16, 2), "v2", mode, dtype, rope="1d",
                                                 misaligned_tables=True)
        assert problem is None, problem
        # float32 tables two elements (8 bytes) off under a 16-bit x: 4 pairs of x fit 8 bytes, but
        # 4 float32 angles need 16, so the tables' own alignment must narrow the vector to 2.
        problem, _ = host_emulation.compare_case(host_kernels, emulation_lib, (2, 300, 16, 2), "v2", mode, dtype, rope="1d",
                                                 misaligned_tables=2, side_dtype="float32")
        assert problem is None, problem


# ---------------------------------------------------------------- float32 side inputs under a 16-bit x

# coeff, mask, cos and sin in float32 under an fp16/bf16 x, as a 16-bit TensorRT 10.x build may
# feed them (sideInputsFloat32): masked without RoPE reads coeff and a fractional mask, the causal
# chain coeff and per-batch 1d tables, masked 2d all four. Their values are not 16-bit numbers.
SIDE_FLOAT32_CASES = [
    ((2, 300, 16, 3), "v2", "masked", {"frame_tokens": 0, "rope": "none", "table_batch": 1, "side_dtype": "float32"}),
    ((2, 300, 16, 2), "v2", "causal", {"frame_tokens": 0, "rope": "1d", "table_batch": 2, "side_dtype": "float32"}),
    ((1, 257, 16, 2), "v2", "masked", {"frame_tokens": 0, "rope": "2d", "table_batch": 1, "side_dtype": "float32"}),
]
SIDE_FLOAT32 = [(shape, variant, mode, dtype, options)
                for shape, variant, mode, options in SIDE_FLOAT32_CASES for dtype in ("float16", "bfloat16")]


def side_inputs_of(case) -> list[np.ndarray]:
    """The case's coeff, mask, cos and sin (those it has), checked to be float32 values that the
    case's 16-bit dtype cannot hold (else the case could not tell float32 reads from 16-bit ones)."""
    shape, variant, mode, dtype, options = case
    sides = [*host_emulation.inputs_for(shape, variant, mode, dtype, **options)[1:],
             *host_emulation.tables_for(shape, variant, mode, dtype, **options)]
    sides = [side for side in sides if side is not None]
    storage = by_name(dtype).numpy()
    for side in sides:
        assert side.dtype == np.float32 and not np.array_equal(side.astype(storage).astype(np.float32), side)
    return sides


@pytest.mark.parametrize("case", SIDE_FLOAT32, ids=_extended_id)
def test_float32_side_inputs_under_16bit_x(host_kernels, emulation_lib, case):
    """The kernels' source (host emulation) == the CPU emulation bit for bit, twice, and both are
    within the error bound of the oracle given the exact float32 side values."""
    shape, variant, mode, dtype, options = case
    side_inputs_of(case)
    problem, y = host_emulation.compare_case(host_kernels, emulation_lib, shape, variant, mode, dtype, **options)
    assert problem is None, problem
    assert y.dtype == by_name(dtype).numpy()
    _run_extended(emulation_lib, case, abi.run_cpu_emulation)[1](y)


def test_16bit_side_inputs_miss_the_bound_of_the_exact_ones(emulation_lib):
    """Why float32 side inputs matter: the causal RoPE case with its side inputs rounded to x's
    16 bits (what a 16-bit build fed the plugin before) misses the oracle's bound for the exact values."""
    for dtype in ("float16", "bfloat16"):
        case = next(c for c in SIDE_FLOAT32 if c[2] == "causal" and c[3] == dtype)
        shape, variant, mode, _, options = case
        x, coeff, _ = host_emulation.inputs_for(shape, variant, mode, dtype, **options)
        cos, sin = side_inputs_of(case)[1:]
        storage = by_name(dtype).numpy()
        extra = {"frame_tokens": options["frame_tokens"], "rope": options["rope"]}
        rounded = abi.run_cpu_emulation(emulation_lib, x, shape[3], variant, mode, coeff.astype(storage),
                                        cos=cos.astype(storage), sin=sin.astype(storage), **extra)
        args = (_as64(x), shape[3], variant, mode, _as64(coeff), None)
        tables = {"cos": _as64(cos), "sin": _as64(sin), **extra}
        error = np.abs(rounded.astype(np.float64) - poly_aggregate(*args, **tables))
        assert np.any(error > error_bound(*args, dtype=dtype, **tables)), dtype


def test_side_inputs_of_mixed_or_third_dtypes_are_refused(emulation_lib):
    x = np.ones((1, 4, 4), dtype=np.float16)
    coeff = np.ones((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="share one dtype"):
        abi.run_cpu_emulation(emulation_lib, x, 2, "v2", "masked", coeff, np.ones((1, 4), dtype=np.float16))
    with pytest.raises(ValueError, match="float16 .x's dtype. or float32, got float64"):
        abi.run_cpu_emulation(emulation_lib, x, 2, "v2", "mean", coeff.astype(np.float64))
    with pytest.raises(ValueError, match="float32 .x's dtype. or float32, got float16"):
        abi.run_cpu_emulation(emulation_lib, x.astype(np.float32), 2, "v2", "mean", coeff.astype(np.float16))


def test_host_emulation_reports_misaligned_vector_access(plugin_tmp):
    """The check that makes the test above meaningful: a misaligned 16-byte load fails the launch."""
    _require("g++")
    source = plugin_tmp / "misaligned_load.cpp"
    source.write_text('''
#include <cuda_runtime.h>
__global__ void loadOne(unsigned char const* bytes, uint4* out) {
    *out = __ldcs(reinterpret_cast<uint4 const*>(bytes));
}
int main() {
    alignas(16) unsigned char bytes[40] = {};
    uint4 out{};
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(1);
    config.blockDim = dim3(4);
    bool const aligned = cudaLaunchKernelEx(&config, loadOne, bytes + 16, &out) == cudaSuccess;
    cudaError_t const offset = cudaLaunchKernelEx(&config, loadOne, bytes + 4, &out);
    bool const reported = offset == cudaErrorMisalignedAddress && std::strstr(cudaGetErrorString(offset), "misaligned");
    return aligned && reported ? 0 : 1;
}
''')
    executable = plugin_tmp / "misaligned_load"
    _run(["g++", "-std=c++20", "-pthread", "-I", str(CUDA_HOST), str(source), "-o", str(executable)])
    assert subprocess.run([str(executable)]).returncode == 0


def test_host_emulation_exposes_a_missing_barrier(plugin_tmp):
    """What makes running both thread orders meaningful: a kernel that reads another thread's
    shared-memory write without __syncthreads() in between is wrong in each order, and the same
    kernel with the barrier is right in both."""
    _require("g++")
    source = plugin_tmp / "missing_barrier.cpp"
    source.write_text('''
#include <cuda_runtime.h>
#include <cstdio>
__global__ void withoutBarrier(int* out) {
    __shared__ int values[4];
    values[threadIdx.x] = threadIdx.x + 1;
    out[threadIdx.x] = values[(threadIdx.x + 1) % 4];
}
__global__ void withBarrier(int* out) {
    __shared__ int values[4];
    values[threadIdx.x] = threadIdx.x + 1;
    __syncthreads();
    out[threadIdx.x] = values[(threadIdx.x + 1) % 4];
}
int main() {
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(1);
    config.blockDim = dim3(4);
    int without[4] = {}, with[4] = {};
    if (cudaLaunchKernelEx(&config, withoutBarrier, without) != cudaSuccess) return 2;
    if (cudaLaunchKernelEx(&config, withBarrier, with) != cudaSuccess) return 2;
    std::printf("%d %d %d %d | %d %d %d %d\\n", without[0], without[1], without[2], without[3], with[0], with[1], with[2], with[3]);
    return 0;
}
''')
    executable = plugin_tmp / "missing_barrier"
    _run(["g++", "-std=c++20", "-I", str(CUDA_HOST), str(source), "-o", str(executable)])
    for order in ("forward", "reverse"):
        result = _run([str(executable)], env=dict(os.environ, POM_CUDA_HOST_THREAD_ORDER=order))
        without, with_barrier = (part.split() for part in result.stdout.split("|"))
        assert with_barrier == ["2", "3", "4", "1"], (order, result.stdout)
        assert without != ["2", "3", "4", "1"], (order, result.stdout)


def _workspace_bytes(lib, mode: str) -> int:
    import ctypes

    desc = abi.make_desc(2, 20001, 64, 2, "v1", mode, "float16")
    return lib.pomPolyAggregateWorkspaceSize(ctypes.byref(desc))


def _tuning_build(plugin_tmp: Path, name: str) -> tuple[Path, Path]:
    """(host-emulated kernels, CPU emulation) built with a tuning variant's -D flags, once."""
    _require("g++")
    flags = gpu_check.compiler_flags(name).split()
    kernels = plugin_tmp / f"libpom_poly_aggregate_host_{name}.so"
    cpu = plugin_tmp / f"libpom_poly_aggregate_cpu_emulation_{name}.so"
    if not (kernels.exists() and cpu.exists()):
        _build_host_emulated_kernels(kernels, *flags)
        _build_cpu_emulation(cpu, *flags)
    return kernels, cpu


# The GPU check's shapes for tuning variants, shortened (every barrier of the emulation wakes
# 256 host threads): partial blocks, K = 16, several column tiles, a carry chain of 10-40 chunks.
VARIANT_SHAPES = [(2, 300, 12, 2), (1, 300, 32, 16), (2, 600, 96, 4), (1, 2601, 4, 2)]
# With other blockings: RoPE pairs across block shapes, frames across split sizes.
VARIANT_EXTENDED = [[2, 600, 16, 2, 0, "2d", 2], [2, 1000, 24, 2, 200, "1d", 1]]


@pytest.mark.parametrize("name", list(gpu_check.TUNING_VARIANTS))
def test_tuning_variants_on_host_emulation(name, plugin_tmp, emulation_lib):
    """The builds gpu_check.sh benchmarks besides the defaults (other block shapes and token
    blocking, the look-back) are correct too: host-emulated kernels == their CPU emulation, bit
    for bit, and the oracle. bfloat16 is left out: its blocking is float16's."""
    kernels_path, cpu_path = _tuning_build(plugin_tmp, name)
    kernels, cpu = abi.load(str(kernels_path)), abi.load(str(cpu_path))
    # The flags took effect: the blocking, hence the workspace, differs from the defaults'.
    assert any(_workspace_bytes(cpu, mode) != _workspace_bytes(emulation_lib, mode) for mode in abi.MODES)
    for shape in VARIANT_SHAPES:
        for variant in abi.VARIANTS:
            for mode in abi.MODES:
                for dtype in ("float32", "float16"):
                    problem, y = host_emulation.compare_case(kernels, cpu, shape, variant, mode, dtype)
                    assert problem is None, f"{shape} {variant} {mode} {dtype}: {problem}"
                    x, coeff, mask = host_emulation.inputs_for(shape, variant, mode, dtype)
                    _assert_close(y, x, shape[3], variant, mode, coeff, mask, dtype)
    for case in host_emulation.extended_cases(VARIANT_EXTENDED):
        shape, variant, mode, dtype, options = case
        if dtype != "bfloat16":
            problem, y = host_emulation.compare_case(kernels, cpu, shape, variant, mode, dtype, **options)
            assert problem is None, f"{_extended_id(case)}: {problem}"
            _run_extended(cpu, case, abi.run_cpu_emulation)[1](y)


def test_gpu_check_script_end_to_end_on_host_emulation(plugin_tmp, host_kernels, emulation_lib):
    """scripts/gpu_check/check_poly_aggregate.py as gpu_check.sh runs it, on the CPU (--emulated):
    so that the one run on a lent GPU is not lost to a bug in the script itself."""
    pytest.importorskip("torch")
    kernels, cpu = _tuning_build(plugin_tmp, "lanes64")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check" / "check_poly_aggregate.py"), "--emulated", "--no-compile",
         "--kernels", host_kernels._name, "--cpu", emulation_lib._name, "--variant", f"lanes64={kernels}:{cpu}"],
        capture_output=True, text=True)
    report = result.stdout + result.stderr[-4000:]
    assert result.returncode == 0, report
    cases = len(gpu_check.SHAPES) * len(abi.VARIANTS) * len(abi.MODES) * len(abi.DTYPES) + len(abi.MODES)
    cases += len(gpu_check.extended_cases(gpu_check.EXTENDED_SHAPES))
    cases += len(gpu_check.extended_cases(gpu_check.SIDE_FLOAT32_SHAPES, ("float16", "bfloat16"), "float32"))
    assert f"correctness ({cases}/{cases} passed" in result.stdout, report
    checks = 72 + len(gpu_check.extended_cases(gpu_check.VARIANT_EXTENDED_SHAPES))
    assert (f"tuning variant lanes64 (-DPOM_BLOCK_COLS=4 -DPOM_BLOCK_LANES=64): {checks}/{checks} correctness checks"
            " passed") in report
    for table in ("benchmark B=1 N=1024 C=64 K=2 float16", "tuning variants: % of copy bandwidth"):
        assert table in result.stdout, report
    for row in ("causal rope 2d", "mean rope 2d", "causal F=256", "causal rope 2d F=256"):  # benchmark rows
        assert row in result.stdout, report
    assert "rope 2d tables/batch sides float32" in result.stdout, report  # the float32 side inputs ran


def test_gpu_check_build_stage_without_gpu(plugin_tmp):
    """scripts/gpu_check.sh --build-only --arch 90 --no-cmake: the builds a GPU run starts with
    on a machine without CMake (the lent GPU machine's image lists none; the CMake build is the
    kernel_build fixture's), a tuning variant, and with TensorRT headers the plugin and its
    host test, which runs here with enqueue skipped. Of the variants nvcc builds only occupancy3
    here: its launch bounds are what only nvcc checks (every variant's code compiles with g++ in
    the host-emulation tests), and each nvcc build costs 10-15 s of this suite's 2 cores."""
    _require("nvcc", "g++")
    build = plugin_tmp / "gpu_check_build"
    env = dict(os.environ, POM_GPU_CHECK_BUILD=str(build))
    try:
        env["TENSORRT_INCLUDE_DIR"] = str(_tensorrt_headers("newest", plugin_tmp))
    except pytest.skip.Exception:
        env.pop("TENSORRT_INCLUDE_DIR", None)
    result = _run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--build-only", "--arch", "90", "--no-cmake",
                   "--variants", "occupancy3"], env=env)
    assert "gpu_check: build only, done" in result.stdout
    libraries = ["libpom_deploy_plugins.so", "libpom_poly_aggregate_cpu_emulation.so"]
    for directory in [build, build / "variant-occupancy3"]:
        for library in libraries:
            assert (directory / library).is_file(), f"{directory / library} was not built"
    assert not any((build / f"variant-{name}").exists() for name in gpu_check.TUNING_VARIANTS if name != "occupancy3")
    sass, _ = _fatbin_architectures(build / "libpom_deploy_plugins.so")
    assert sass == {90}
    if "TENSORRT_INCLUDE_DIR" in env:
        assert (build / "libpom_deploy_plugins_autoregister.so").is_file()
        host_test = _run([str(build / "poly_aggregate_plugin_host_test")])
        assert "enqueue checks skipped: no CUDA device" in host_test.stdout
        assert "all PolyAggregate plugin host checks passed" in host_test.stdout


@pytest.mark.parametrize("build", ["defaults", "lookback"])
def test_kernel_source_with_concurrent_blocks(build, plugin_tmp, host_kernels, emulation_lib):
    """Blocks run at the same time in four processes (POM_CUDA_HOST_PROCESSES), so causal chunks
    really wait for their predecessors (chain) or add up their totals (look-back): results stay
    bit-identical to the CPU emulation and deterministic. Run in order, a chunk's predecessor has
    always finished: a kernel that skipped the wait, or a look-back that dropped the totals it
    walked over, passes in order and fails here."""
    if build == "defaults":
        kernels, cpu = host_kernels._name, emulation_lib._name
    else:
        kernels, cpu = map(str, _tuning_build(plugin_tmp, build))
    shapes = [(2, 300, 12, 2), (1, 2601, 4, 2), (2, 600, 96, 4)]  # a chain of 21 causal chunks; several column tiles
    env = dict(os.environ, POM_CUDA_HOST_PROCESSES="4", POM_CUDA_HOST_VERBOSE="1")
    result = subprocess.run(
        [sys.executable, str(CUDA_HOST / "compare_with_cpu_emulation.py"), "--kernels", kernels,
         "--cpu", cpu, "--shapes", json.dumps(shapes)], capture_output=True, text=True, env=env)
    report = result.stdout + result.stderr[-4000:]
    assert result.returncode == 0, report
    cases = len(shapes) * len(abi.VARIANTS) * len(abi.MODES) * len(abi.DTYPES) + 6
    assert f"{cases} of {cases} cases bit-identical" in result.stdout, report
    sleeps = [int(n) for n in re.findall(r"in 4 process\(es\), (\d+) spin-wait sleeps", result.stderr)]
    assert len(sleeps) >= cases and max(sleeps) > 0, "no block ever waited for another: nothing ran concurrently"


# Under the sanitizers: RoPE with both kinds of tables and the largest degree, frames of one
# split, one frame over three splits, one-token frames, frames with RoPE.
ASAN_EXTENDED = [EXTENDED[i] for i in (0, 1, 3, 6, 7, 8, 9)]
# Under ASan (about 20x slower) the shapes keep every boundary the plain run has (one token,
# tokens off the blocking, odd channels, the largest degree, two column tiles, a causal chain of
# many chunks) at smaller sizes: the largest degree over 300 tokens instead of 700, a chain of
# 21 chunks instead of 157.
ASAN_SHAPES = [(2, 1, 6, 3), (1, 257, 5, 5), (2, 300, 12, 2), (1, 300, 32, 16), (3, 130, 7, 1), (1, 2601, 4, 2),
               (2, 600, 64, 2)]

# Token-causal with RoPE (the only chained launches in the run), and block-causal frames.
CONCURRENT_EXTENDED = [[2, 300, 16, 2, 0, "1d", 2], [2, 1000, 24, 2, 200, "2d", 1], [1, 700, 5, 5, 1, "none", 1]]


@pytest.mark.parametrize("build", ["defaults", "lookback"])
def test_rope_and_frames_with_concurrent_blocks(build, plugin_tmp, host_kernels, emulation_lib):
    """RoPE and block-causal cases with blocks in four processes: bit-identical to the CPU
    emulation. The run's only chained launches are RoPE causal ones, so sleeps prove that their
    chunks waited for their predecessors. Block-causal has no cross-block protocol (its reduce,
    scan and broadcast are separate launches, ordered by the stream): it must simply stay
    bit-identical with its blocks running at the same time."""
    if build == "defaults":
        kernels, cpu = host_kernels._name, emulation_lib._name
    else:
        kernels, cpu = map(str, _tuning_build(plugin_tmp, build))
    env = dict(os.environ, POM_CUDA_HOST_PROCESSES="4", POM_CUDA_HOST_VERBOSE="1")
    result = subprocess.run(
        [sys.executable, str(CUDA_HOST / "compare_with_cpu_emulation.py"), "--kernels", kernels, "--cpu", cpu,
         "--shapes", "[]", "--extended", json.dumps(CONCURRENT_EXTENDED)], capture_output=True, text=True, env=env)
    report = result.stdout + result.stderr[-4000:]
    assert result.returncode == 0, report
    cases = 6 + len(host_emulation.extended_cases(CONCURRENT_EXTENDED)) + 12  # + misaligned and float32 tables
    assert f"{cases} of {cases} cases bit-identical" in result.stdout, report
    sleeps = [int(n) for n in re.findall(r"in 4 process\(es\), (\d+) spin-wait sleeps", result.stderr)]
    assert len(sleeps) >= cases and max(sleeps) > 0, "no RoPE causal chunk ever waited: nothing ran concurrently"


def _sanitizer_preload() -> str:
    libraries = [subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
                 for name in ("libasan.so", "libubsan.so")]
    if not all(Path(library).is_absolute() and Path(library).exists() for library in libraries):
        pytest.skip("g++ has no AddressSanitizer runtime")
    return ":".join(libraries)


def test_kernel_source_under_address_sanitizer(plugin_tmp, host_kernels_sanitized):
    """The host-emulation cases again (ASAN_SHAPES), with the kernels built with ASan + UBSan: an
    access outside x, y, the workspace or shared memory aborts the run."""
    preload = _sanitizer_preload()
    kernels = host_kernels_sanitized
    cpu = _build_cpu_emulation(plugin_tmp / "libpom_poly_aggregate_cpu_emulation_asan.so", *SANITIZERS)
    env = dict(os.environ, LD_PRELOAD=preload, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0")
    result = subprocess.run(
        [sys.executable, str(CUDA_HOST / "compare_with_cpu_emulation.py"), "--kernels", str(kernels), "--cpu", str(cpu),
         "--shapes", json.dumps(ASAN_SHAPES), "--extended", json.dumps(ASAN_EXTENDED)], capture_output=True, text=True,
        env=env)
    report = result.stdout + result.stderr[-4000:]
    assert result.returncode == 0, report
    cases = len(ASAN_SHAPES) * len(abi.VARIANTS) * len(abi.MODES) * len(abi.DTYPES) + 6
    cases += len(host_emulation.extended_cases(ASAN_EXTENDED)) + 12  # + misaligned and float32 tables
    assert f"{cases} of {cases} cases bit-identical" in result.stdout, report


# ---------------------------------------------------------------- CUDA build


def _fatbin_architectures(library: Path) -> tuple[set[int], set[int]]:
    """(SASS, PTX) architectures in the CUDA fat binaries embedded in `library`."""
    data = library.read_bytes()
    magic = struct.pack("<I", 0xBA55ED50)
    sass, ptx = set(), set()
    pos = data.find(magic)
    while pos != -1:
        _, header_size, fat_size = struct.unpack_from("<HHQ", data, pos + 4)
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            arch = struct.unpack_from("<I", data, entry + 28)[0]
            (sass if kind == 2 else ptx).add(arch)
            entry += entry_header + payload
        pos = data.find(magic, end)
    return sass, ptx


def test_kernels_compile_for_every_architecture(kernel_build):
    """CMake's default list is every architecture users run (SASS from Turing to Blackwell, Orin
    and Thor included, PTX of the newest); the fixture's build of its oldest, Orin's, Thor's and
    the newest PTX (conftest.kernel_test_architectures) gives exactly those in the library."""
    default = re.search(r"PolyAggregate CUDA architectures: (\S+)", kernel_build["log"]).group(1).split(";")
    expected = ["75-real", "80-real", "86-real", "87-real", "89-real", "90-real"]
    version = nvcc_version()
    if version >= (13, 0):
        expected += ["100-real", "110-real", "120-real", "120-virtual"]
    elif version >= (12, 8):
        expected += ["100-real", "101-real", "120-real", "120-virtual"]
    else:
        expected += ["90-virtual"]
    assert default == expected
    built = kernel_test_architectures()
    assert set(built) <= set(default)
    sass, ptx = _fatbin_architectures(kernel_build["library"])
    assert sass == {int(a.split("-")[0]) for a in built if a.endswith("-real")}
    assert ptx == {int(a.split("-")[0]) for a in built if a.endswith("-virtual")}


def test_kernel_library_c_abi_without_gpu(kernel_build):
    import ctypes

    lib = abi.load(str(kernel_build["library"]))
    good = abi.make_desc(4, 16384, 2048, 2, "v1", "causal", "float16")
    assert lib.pomPolyAggregateValidate(ctypes.byref(good)) == 0
    assert lib.pomPolyAggregateWorkspaceSize(ctypes.byref(good)) > 0
    bad = abi.make_desc(1, 8, 6, 4, "v1", "mean", "float32")
    # Argument errors are reported before anything touches the device.
    assert lib.pomPolyAggregateLaunch(ctypes.byref(bad), None, None, None, None, None, 0, None) == -8
    assert lib.pomPolyAggregateStatusString(-8).decode().startswith("v1 needs")


# ---------------------------------------------------------------- TensorRT adapter, host side


def _newest_tag(mirror: Path) -> str:
    tags = subprocess.run(["git", "--git-dir", str(mirror), "tag", "--sort=-v:refname"],
                          capture_output=True, text=True).stdout.split()
    return next(tag for tag in tags if re.fullmatch(r"v\d+\.\d+(\.\d+)?", tag))


def _tensorrt_headers(which: str, plugin_tmp: Path) -> Path:
    if which == "env":
        include = os.environ.get("TENSORRT_INCLUDE_DIR")
        if not include or not (Path(include) / "NvInferRuntime.h").is_file():
            pytest.skip("TENSORRT_INCLUDE_DIR is not set to TensorRT's include directory")
        return Path(include)
    if TRT_MIRROR is None:
        pytest.skip("POM_TENSORRT_MIRROR is not set (a git mirror of NVIDIA/TensorRT, for its headers)")
    if shutil.which("git") is None or not TRT_MIRROR.is_dir():
        pytest.skip(f"no NVIDIA/TensorRT git mirror at {TRT_MIRROR} (POM_TENSORRT_MIRROR)")
    tag = OLDEST_TENSORRT_TAG if which == "oldest" else _newest_tag(TRT_MIRROR)
    target = plugin_tmp / f"tensorrt-{tag}"
    if not (target / "include" / "NvInferRuntime.h").is_file():
        target.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "--git-dir", str(TRT_MIRROR), "archive", tag, "include"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "include"


def _cuda_dirs(tmp: Path) -> tuple[Path, Path]:
    """CUDA's include and library directories, as nvcc itself reports them (nvcc may be a wrapper)."""
    probe = tmp / "probe.cu"
    probe.write_text("")
    dryrun = subprocess.run(["nvcc", "-dryrun", "-c", str(probe)], capture_output=True, text=True, cwd=tmp)
    output = dryrun.stdout + dryrun.stderr
    include = re.search(r'INCLUDES="-I([^"]+)"', output)
    libraries = [Path(d) for d in re.findall(r'"-L([^"]+)"', output) if not d.rstrip("/").endswith("stubs")]
    if include is None or not libraries:
        pytest.fail(f"cannot find CUDA's include and library directories from nvcc -dryrun:\n{output}")
    return Path(include.group(1).strip()), libraries[-1]


def _plugin_host_test(which: str, backend: str, plugin_tmp: Path, kernels: Path) -> str:
    """Build and run plugins/tests/polyAggregatePluginHostTest.cpp with the plugin; its output."""
    include = _tensorrt_headers(which, plugin_tmp)
    executable = plugin_tmp / f"plugin_host_test_{which}_{backend}"
    sources = [str(POLY_AGGREGATE / "polyAggregatePlugin.cpp"),
               str(PLUGINS / "tests" / "polyAggregatePluginHostTest.cpp")]
    common = ["-O1", "-Wall", "-Wextra", "-Werror", "-I", str(POLY_AGGREGATE), "-isystem", str(include)]
    if backend == "cuda":  # the real kernels and CUDA runtime; enqueue is skipped without a GPU
        cuda_include, cuda_lib = _cuda_dirs(plugin_tmp)
        _run(["g++", "-std=c++17", *common, "-isystem", str(cuda_include), *sources, str(kernels),
              f"-Wl,-rpath,{kernels.parent}", f"-L{cuda_lib}", "-lcudart", f"-Wl,-rpath,{cuda_lib}", "-ldl",
              "-o", str(executable)])
    else:  # the kernels' source on the host emulation: enqueue runs, under ASan and UBSan
        _run(["g++", "-std=c++20", *common, *SANITIZERS, "-pthread", "-I", str(CUDA_HOST), *sources, str(kernels),
              f"-Wl,-rpath,{kernels.parent}", "-ldl", "-o", str(executable)])
    result = _run([str(executable)], env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
    assert "all PolyAggregate plugin host checks passed" in result.stdout
    return result.stdout


@pytest.mark.parametrize("which", ["env", "oldest", "newest"])
def test_plugin_host_side_with_tensorrt_headers(which, plugin_tmp, kernel_build):
    output = _plugin_host_test(which, "cuda", plugin_tmp, kernel_build["library"])
    print(output)


def _plugin_libraries(plugin_tmp: Path, kernels: Path) -> tuple[Path, Path]:
    """(the plugin library, its autoregister library), built as CMake builds them, with the newest
    TensorRT headers and the kernels' source on the host emulation (no CUDA runtime needed)."""
    include = _tensorrt_headers("newest", plugin_tmp)
    plugin, autoregister = plugin_tmp / "libpom_deploy_plugins.so", plugin_tmp / "libpom_deploy_plugins_autoregister.so"
    common = ["g++", "-std=c++20", "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-fvisibility=hidden",
              "-I", str(POLY_AGGREGATE), "-I", str(CUDA_HOST), "-isystem", str(include)]
    _run([*common, str(POLY_AGGREGATE / "polyAggregatePlugin.cpp"), str(kernels), f"-Wl,-rpath,{kernels.parent}",
          "-o", str(plugin)])
    _run([*common, str(POLY_AGGREGATE / "polyAggregateAutoRegister.cpp"), str(plugin), f"-Wl,-rpath,{plugin.parent}",
          "-ldl", "-o", str(autoregister)])
    return plugin, autoregister


def test_plugin_library_hands_out_its_creator_through_get_creators_only(plugin_tmp, host_kernels):
    """The library as IPluginRegistry::loadLibrary loads it (dlopen, RTLD_LOCAL, then getCreators):
    one creator, the same on every call, whatever else is loaded; and loading it registers nothing
    by itself (no load-time lookup of TensorRT's registry), so no registry gets it twice. The
    separate autoregister library is the plain-dlopen path; without TensorRT in the process it
    registers nothing and says so."""
    import ctypes

    plugin, autoregister = _plugin_libraries(plugin_tmp, Path(host_kernels._name))
    undefined = _run(["nm", "-D", "--undefined-only", str(plugin)]).stdout
    assert "dlopen" not in undefined and "dlsym" not in undefined, "the plugin library looks up a registry itself"
    library = ctypes.CDLL(str(plugin), mode=ctypes.RTLD_LOCAL)
    get_creators = library.getCreators
    get_creators.restype = ctypes.POINTER(ctypes.c_void_p)
    get_creators.argtypes = [ctypes.POINTER(ctypes.c_int32)]  # int32_t& is a pointer in the ABI
    counts, firsts = [], []
    for _ in range(2):
        count = ctypes.c_int32(-1)
        creators = get_creators(ctypes.byref(count))
        counts.append(count.value)
        firsts.append(creators[0])
    assert counts == [1, 1] and firsts[0] is not None and firsts[0] == firsts[1]
    # The autoregister library, loaded after the plugin library (as with TensorRT not loaded yet).
    result = subprocess.run([sys.executable, "-c", (
        "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); print('registered', lib.pomPolyAggregateAutoRegistered())"),
        str(autoregister)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "registered 0" in result.stdout
    assert "is not loaded: nothing registered (load TensorRT first)" in result.stderr


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_plugin_enqueue_on_host_emulation(which, plugin_tmp, host_kernels_sanitized):
    """enqueue as TensorRT calls it, against a direct C ABI launch, for every variant, mode, dtype,
    RoPE (tables shared and per batch row) and block-causal configurations, and float32 side inputs
    under fp16/bf16 x."""
    output = _plugin_host_test(which, "emulation", plugin_tmp, host_kernels_sanitized)
    assert "enqueue checked against the C ABI launch for 35 configurations" in output


# ---------------------------------------------------------------- GPU check scripts, CPU parts


def test_gpu_check_scripts_cpu_parts():
    """What scripts/gpu_check.sh runs that does not need a GPU: shell syntax, imports, the
    PyTorch baseline it times, and the ONNX node form the TensorRT check feeds the parser."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    _run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")])
    import check_trt_engines
    import check_trt_plugin

    two = check_trt_engines.TwoDegrees()  # the --no-plugin check's model: layers of degrees 2 and 3
    assert [layer.order for layer in (two.first, two.second)] == [2, 3]
    assert two(torch.randn(1, 5, 64)).shape == (1, 5, 64)

    for variant in abi.VARIANTS:
        for mode in abi.MODES:
            x, coeff, mask = abi.make_inputs(3, 2, 130, 12, 3, variant, mode, "float32")
            tensor = lambda a: None if a is None else torch.from_numpy(a)
            baseline = gpu_check.torch_poly_aggregate(tensor(x), 3, variant, mode, tensor(coeff), tensor(mask))
            _assert_close(baseline.double().numpy(), x, 3, variant, mode, coeff, mask, "float32")

            model = onnx.load_from_string(check_trt_plugin.make_model(variant, mode, 3, "float16"))
            onnx.checker.check_model(model)
            (node,) = model.graph.node
            assert (node.op_type, node.domain) == ("PolyAggregate", "pom_deploy")
            assert len(node.input) == 1 + (variant == "v2") + (mode == "masked")
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attributes == {"variant": variant.encode(), "degree": 3, "mode": mode.encode(),
                                  "plugin_version": b"1", "plugin_namespace": b"pom_deploy"}

    # RoPE and block-causal: the baseline (the model's rotation and _block_causal_mean) and the nodes.
    for variant, mode, frame_tokens, rope, table_batch in check_trt_plugin.EXTENDED:
        x, coeff, mask = abi.make_inputs(4, 2, 300, 12, 3, variant, mode, "float32")
        cos, sin = abi.make_rope_tables(5, table_batch, 300, 12, "float32") if rope != "none" else (None, None)
        tensor = lambda a: None if a is None else torch.from_numpy(a)
        options = {"frame_tokens": frame_tokens, "rope": rope}
        baseline = gpu_check.torch_poly_aggregate(tensor(x), 3, variant, mode, tensor(coeff), tensor(mask),
                                                  cos=tensor(cos), sin=tensor(sin), **options)
        _assert_close(baseline.double().numpy(), x, 3, variant, mode, coeff, mask, "float32", cos=cos, sin=sin,
                      **options)

        model = onnx.load_from_string(check_trt_plugin.make_model(variant, mode, 3, "float16", channels=12, **options))
        onnx.checker.check_model(model)  # the schema pom_deploy registers lists frame_tokens and rope
        (node,) = model.graph.node
        assert list(node.input) == ["x", *(["coeff"] if variant == "v2" else []), *(["mask"] if mode == "masked" else []),
                                    *(["cos", "sin"] if rope != "none" else [])]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes.get("frame_tokens", 0) == frame_tokens
        assert attributes.get("rope", b"none") == rope.encode()

    # float32 side inputs under an fp16 x (what the check builds strongly typed): the node's input types.
    for variant, mode, frame_tokens, rope, _ in check_trt_plugin.SIDE_FLOAT32:
        model = onnx.load_from_string(check_trt_plugin.make_model(variant, mode, 3, "float16", channels=12,
                                                                  frame_tokens=frame_tokens, rope=rope,
                                                                  side_dtype="float32"))
        onnx.checker.check_model(model)
        types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        assert types.pop("x") == model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        assert set(types.values()) == {onnx.TensorProto.FLOAT} and len(types) >= 2
