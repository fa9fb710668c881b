"""ctypes binding of the PolyAggregate C ABI (plugins/poly_aggregate/polyAggregate.h).

Used by the CPU-emulation and host-emulation tests (tests/test_plugin_poly_aggregate.py,
plugins/tests/cuda_host) and by the GPU check (scripts/gpu_check/check_poly_aggregate.py).
The variants, modes and dtypes are the op's (``poly_aggregate``) and the dtype registry's; their
C enum codes are checked against the header by tests/test_plugin_identity.py.
"""

from __future__ import annotations

import ctypes
import inspect
import mmap
import os

import numpy as np

from ..dtypes import FLOAT_TYPES, by_name
from . import poly_aggregate as op

DTYPES = {t.name: t.abi for t in FLOAT_TYPES}  # PomDType
VARIANTS = {variant: code for code, variant in enumerate(op.VARIANTS, start=1)}  # PomVariant: POM_VARIANT_V1 = 1
MODES = {mode: code for code, mode in enumerate(op.MODES)}  # PomMode: POM_MODE_MEAN = 0
ROPES = {rope: code for code, rope in enumerate(op.ROPES)}  # PomRope: POM_ROPE_NONE = 0
MAX_DEGREE = 16  # POM_MAX_DEGREE
MAX_ROPE_DEGREE = 8  # POM_MAX_ROPE_DEGREE: RoPE kernels keep their accumulators in registers


class Desc(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("tokens", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("degree", ctypes.c_int32),
        ("variant", ctypes.c_int32),
        ("mode", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        # Zero (the default of a shorter positional construction) keeps the original behaviour.
        ("frame_tokens", ctypes.c_int64),
        ("rope", ctypes.c_int32),
        ("rope_per_batch", ctypes.c_int32),
        ("side_inputs_float32", ctypes.c_int32),  # coeff, mask, cos and sin in float32 whatever x is
    ]


TASK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t)  # PomTask
PARALLEL_FOR = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, TASK, ctypes.c_void_p, ctypes.c_size_t)  # PomParallelFor


def make_inputs(seed: int, batch: int, tokens: int, channels: int, degree: int, variant: str, mode: str, dtype: str,
                side_dtype: str | None = None):
    """(x, coeff, mask): x rounded to ``dtype``, coeff and mask to ``side_dtype`` (default ``dtype``),
    so the float64 oracle sees exactly what a kernel sees. A float32 ``side_dtype`` under a 16-bit
    x gives a fractional mask, whose weights 16 bits would round (a 0/1 mask is exact in any dtype)."""
    rng = np.random.default_rng(seed)
    storage = by_name(dtype).numpy()
    side = by_name(side_dtype or dtype).numpy()
    fractional_mask = side_dtype is not None and side_dtype != dtype
    x = (3.0 * rng.standard_normal((batch, tokens, channels))).astype(storage)
    coeff = None
    if variant == "v2":  # shrink high powers so that a^K (a up to 6) stays in fp16 range
        coeff = (rng.uniform(-1.0, 1.0, (channels, degree)) * 4.0 ** -np.arange(degree)).astype(side)
    mask = None
    if mode == "masked":
        draws = rng.random((batch, tokens))
        mask = (draws if fractional_mask else draws < 0.6).astype(side)
    return x, coeff, mask


def make_rope_tables(seed: int, table_batch: int, tokens: int, channels: int, dtype: str):
    """(cos, sin) of random angles, (table_batch, N, C/2), rounded to ``dtype``; table_batch is B or 1."""
    angles = np.random.default_rng(seed).uniform(-np.pi, np.pi, (table_batch, tokens, channels // 2))
    storage = by_name(dtype).numpy()
    return np.cos(angles).astype(storage), np.sin(angles).astype(storage)


def make_desc(batch: int, tokens: int, channels: int, degree: int, variant: str, mode: str, dtype: str,
              frame_tokens: int = 0, rope: str = "none", rope_per_batch: bool = False,
              side_inputs_float32: bool = False) -> Desc:
    return Desc(batch, tokens, channels, degree, VARIANTS[variant], MODES[mode], DTYPES[dtype], frame_tokens,
                ROPES[rope], int(rope_per_batch), int(side_inputs_float32))


def side_inputs_float32(x: np.ndarray, *sides: np.ndarray | None) -> bool:
    """Whether the side inputs given (coeff, mask, cos, sin; None for absent ones) are float32
    under an x of another dtype -- the C ABI's sideInputsFloat32 -- rather than in x's dtype.
    ValueError for side inputs of mixed dtypes or of a third dtype."""
    dtypes = {np.dtype(side.dtype) for side in sides if side is not None}
    if len(dtypes) > 1:
        raise ValueError(f"coeff, mask, cos and sin must share one dtype, got {sorted(d.name for d in dtypes)}")
    side = dtypes.pop() if dtypes else np.dtype(x.dtype)
    if side != x.dtype and side != np.float32:
        raise ValueError(f"coeff, mask, cos and sin must be {np.dtype(x.dtype).name} (x's dtype) or float32, got {side.name}")
    return side != x.dtype


def output_shape(batch: int, tokens: int, channels: int, mode: str) -> tuple[int, int, int]:
    return (batch, tokens if mode == "causal" else 1, channels)


def load(path: str) -> ctypes.CDLL:
    """Load a library built from polyAggregateKernel.cu (GPU), polyAggregateCpuKernel.cpp (the CPU kernel)
    or plugins/tests/polyAggregateCpuEmulation.cpp (the test-only CPU emulation)."""
    lib = ctypes.CDLL(path)
    desc_p = ctypes.POINTER(Desc)
    lib.pomPolyAggregateValidate.argtypes = [desc_p]
    lib.pomPolyAggregateValidate.restype = ctypes.c_int
    if hasattr(lib, "pomPolyAggregateWorkspaceSize"):  # the GPU kernels and their emulations
        lib.pomPolyAggregateWorkspaceSize.argtypes = [desc_p]
        lib.pomPolyAggregateWorkspaceSize.restype = ctypes.c_size_t
    lib.pomPolyAggregateStatusString.argtypes = [ctypes.c_int]
    lib.pomPolyAggregateStatusString.restype = ctypes.c_char_p
    ptr = ctypes.c_void_p
    if hasattr(lib, "pomPolyAggregateLaunch"):
        lib.pomPolyAggregateLaunch.argtypes = [desc_p, ptr, ptr, ptr, ptr, ptr, ctypes.c_size_t, ptr]
        lib.pomPolyAggregateLaunch.restype = ctypes.c_int
    if hasattr(lib, "pomPolyAggregateLaunchEx"):
        lib.pomPolyAggregateLaunchEx.argtypes = [desc_p, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_size_t, ptr]
        lib.pomPolyAggregateLaunchEx.restype = ctypes.c_int
    if hasattr(lib, "pomPolyAggregateCpuEmulation"):
        lib.pomPolyAggregateCpuEmulation.argtypes = [desc_p, ptr, ptr, ptr, ptr]
        lib.pomPolyAggregateCpuEmulation.restype = ctypes.c_int
    if hasattr(lib, "pomPolyAggregateCpuEmulationEx"):
        lib.pomPolyAggregateCpuEmulationEx.argtypes = [desc_p, ptr, ptr, ptr, ptr, ptr, ptr]
        lib.pomPolyAggregateCpuEmulationEx.restype = ctypes.c_int
    if hasattr(lib, "pomPolyAggregateCpuKernel"):
        lib.pomPolyAggregateCpuKernel.argtypes = [desc_p, ptr, ptr, ptr, ptr, ptr, ptr, PARALLEL_FOR, ptr]
        lib.pomPolyAggregateCpuKernel.restype = ctypes.c_int
    return lib


def check(lib: ctypes.CDLL, status: int) -> None:
    if status != 0:
        raise RuntimeError(f"PolyAggregate status {status}: {lib.pomPolyAggregateStatusString(status).decode()}")


def _zeros(shape, dtype, shared: bool) -> np.ndarray:
    """Zeros, in memory that forked processes share when `shared` (else plain NumPy memory)."""
    if not shared:
        return np.zeros(shape, dtype=dtype)
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1))  # anonymous, MAP_SHARED
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def _call(lib: ctypes.CDLL, entry: str, arguments: dict, parallel_for=None) -> np.ndarray:
    """Run ``entry`` ("cpu_emulation", "host_launch" or "cpu_kernel") with the oracle's ``arguments``."""
    x, cos, sin, mode = arguments["x"], arguments["cos"], arguments["sin"], arguments["mode"]
    batch, tokens, channels = x.shape
    per_batch = cos is not None and cos.shape[0] == batch and batch != 1
    float32_sides = side_inputs_float32(x, *(arguments[k] for k in ("coeff", "mask", "cos", "sin")))
    desc = make_desc(batch, tokens, channels, arguments["degree"], arguments["variant"], mode, np.dtype(x.dtype).name,
                     arguments["frame_tokens"], arguments["rope"], per_batch, float32_sides)
    # The host emulation's concurrent blocks (POM_CUDA_HOST_PROCESSES > 1) write from forked processes.
    shared = entry == "host_launch" and int(os.environ.get("POM_CUDA_HOST_PROCESSES", "1") or 1) > 1
    y = _zeros(output_shape(batch, tokens, channels, mode), x.dtype, shared)
    # A contiguous view keeps its address, so callers can pass deliberately misaligned views.
    arrays = [np.ascontiguousarray(arguments[k]) if arguments[k] is not None else None for k in ("x", "coeff", "mask", "cos", "sin")]
    pointers = [a.ctypes.data if a is not None else None for a in arrays]
    # Without tables the original entry points run (they must keep working); with them the Ex ones.
    extended = cos is not None or sin is not None
    if entry == "cpu_kernel":
        status = lib.pomPolyAggregateCpuKernel(ctypes.byref(desc), *pointers, y.ctypes.data, parallel_for or PARALLEL_FOR(), None)
    elif entry == "cpu_emulation":
        if extended:
            status = lib.pomPolyAggregateCpuEmulationEx(ctypes.byref(desc), *pointers, y.ctypes.data)
        else:
            status = lib.pomPolyAggregateCpuEmulation(ctypes.byref(desc), *pointers[:3], y.ctypes.data)
    else:
        workspace = _zeros((lib.pomPolyAggregateWorkspaceSize(ctypes.byref(desc)),), np.uint8, shared)
        tail = (y.ctypes.data, workspace.ctypes.data, workspace.size, None)
        if extended:
            status = lib.pomPolyAggregateLaunchEx(ctypes.byref(desc), *pointers, *tail)
        else:
            status = lib.pomPolyAggregateLaunch(ctypes.byref(desc), *pointers[:3], *tail)
    check(lib, status)
    return y


# The runners take the oracle's arguments (``poly_aggregate.poly_aggregate``: x, degree, variant, mode,
# coeff, mask, frame_tokens, rope, cos, sin), after the library: that signature is written once, there.
_OP_SIGNATURE = inspect.signature(op.poly_aggregate)


def _runner(entry: str, doc: str, *, takes_parallel_for: bool = False):
    def run(lib: ctypes.CDLL, *args, **kwargs) -> np.ndarray:
        parallel_for = kwargs.pop("parallel_for", None) if takes_parallel_for else None
        bound = _OP_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        return _call(lib, entry, bound.arguments, parallel_for)

    parameters = [inspect.Parameter("lib", inspect.Parameter.POSITIONAL_OR_KEYWORD), *_OP_SIGNATURE.parameters.values()]
    if takes_parallel_for:
        parameters.append(inspect.Parameter("parallel_for", inspect.Parameter.KEYWORD_ONLY, default=None))
    run.__signature__ = _OP_SIGNATURE.replace(parameters=parameters)
    run.__name__ = run.__qualname__ = f"run_{entry}"
    run.__doc__ = doc
    return run


run_cpu_emulation = _runner("cpu_emulation", """Run the test-only CPU emulation of the CUDA kernels
(plugins/tests/polyAggregateCpuEmulation.cpp) on contiguous arrays: x in float32, float16 or bfloat16,
coeff, mask, cos and sin in x's dtype or all in float32. cos and sin (B or 1, N, C/2) for rope "1d" or
"2d"; tables of batch B are read per batch row.""")

run_host_launch = _runner("host_launch", """Run pomPolyAggregateLaunch(Ex) on host arrays: for
polyAggregateKernel.cu built against the host emulation of CUDA (plugins/tests/cuda_host), whose
device memory is host memory.""")

run_cpu_kernel = _runner("cpu_kernel", """Run the shipped CPU kernel (polyAggregateCpuKernel.cpp) on
host arrays. ``parallel_for``: a ``PARALLEL_FOR`` callback (None: the calling thread runs every task).""",
                         takes_parallel_for=True)
