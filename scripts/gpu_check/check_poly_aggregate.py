"""GPU check of the PolyAggregate kernels through their C ABI (ctypes + torch CUDA tensors).

1. Correctness: every variant, mode and dtype on odd shapes (N = 1, odd C, K = 1 and 16,
   tokens off the 128/256 blocking, a misaligned x that forces scalar loads), and RoPE 1d/2d
   and block-causal cases (EXTENDED_SHAPES), against the float64 oracle, against the CPU
   emulation (same blocking: only erfcf's last bits may differ), and run twice for
   bit-identical results (determinism); and fp16/bf16 x with float32 coeff, mask, cos and sin
   (SIDE_FLOAT32_SHAPES, values 16 bits cannot hold), as a 16-bit TensorRT 10.x build may feed them.
2. Benchmark at B=4, N=16384, C=2048: kernel bandwidth vs the device's measured copy
   bandwidth (torch copy_ of the same bytes), and time vs PyTorch eager and torch.compile, for
   every plain op and v2 with RoPE 2d (mean, causal) and block-causal frames of 256 tokens.
3. Tuning variants (--variant, built by gpu_check.sh with other compile-time constants): a
   shorter correctness check each, then their bandwidth side by side with the defaults'.

Run by scripts/gpu_check.sh; exits non-zero when a correctness check fails. With --emulated it
runs on the CPU instead, with libraries built against the CUDA host emulation
(plugins/tests/cuda_host), at a small benchmark shape: CI uses that to check this script end to
end without a GPU. Its timings mean nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's pom_deploy, installed or not
from pom_deploy.ops import poly_aggregate_abi as abi  # noqa: E402 - imported after sys.path gains this checkout
from pom_deploy.ops.poly_aggregate import error_bound, poly_aggregate  # noqa: E402 - imported after sys.path gains this checkout
SHAPES = [(2, 1, 6, 3), (1, 257, 5, 5), (2, 300, 12, 2), (1, 700, 32, 16), (3, 130, 7, 1), (2, 5000, 96, 4),
          (1, 20001, 4, 2)]
# Enough to catch a blocking error in a variant: partial blocks, K = 16, a long carry chain.
VARIANT_SHAPES = [(2, 300, 12, 2), (1, 700, 32, 16), (2, 5000, 96, 4), (1, 20001, 4, 2)]
# RoPE and block-causal: (batch, tokens, channels, degree, frame_tokens, rope, batch of cos/sin).
# Tables per batch row and shared, 2d halves across column tiles, the largest RoPE degree, a
# 157-chunk chain with RoPE; frames off the blocking, of one split, one frame, one-token frames,
# frames with RoPE.
EXTENDED_SHAPES = [(2, 300, 16, 2, 0, "1d", 2), (1, 257, 8, 3, 0, "2d", 1), (2, 5000, 128, 2, 0, "2d", 1),
                   (1, 130, 4, 8, 0, "1d", 1), (1, 20001, 4, 2, 0, "1d", 1), (2, 300, 12, 2, 60, "none", 1),
                   (1, 768, 15, 3, 256, "none", 1), (2, 600, 8, 2, 600, "none", 1), (1, 700, 5, 5, 1, "none", 1),
                   (2, 4000, 96, 2, 400, "2d", 2)]
# float32 coeff, mask, cos and sin under a 16-bit x, in the EXTENDED_SHAPES form: every mode
# without RoPE (a fractional mask), RoPE 2d with tables per batch row, RoPE 1d with frames.
SIDE_FLOAT32_SHAPES = [(2, 5000, 96, 3, 0, "none", 1), (2, 5000, 128, 2, 0, "2d", 2), (2, 4000, 64, 2, 400, "1d", 1)]
VARIANT_EXTENDED_SHAPES = [(2, 600, 16, 2, 0, "2d", 2), (2, 1000, 24, 2, 200, "1d", 1)]
BENCH_SHAPE = (4, 16384, 2048, 2)  # (batch, tokens, channels, degree) of the goal, float16
BENCH_FRAME_TOKENS = 256
# Benchmarked ops: (variant, mode, frame_tokens, rope); v2 for RoPE and frames (the video and
# RoPE models are PoMv2).
BENCH_OPS = [(v, m, 0, "none") for v in ("v1", "v2") for m in ("mean", "causal", "masked")] + [
    ("v2", "mean", 0, "2d"), ("v2", "causal", 0, "2d"), ("v2", "causal", BENCH_FRAME_TOKENS, "none"),
    ("v2", "causal", BENCH_FRAME_TOKENS, "2d")]
# torch.compile (tens of seconds each) for the goal rows and the new fused paths.
COMPILED_OPS = {("v1", "mean", 0, "none"), ("v1", "causal", 0, "none"), ("v2", "mean", 0, "2d"),
                ("v2", "causal", 0, "2d"), ("v2", "causal", BENCH_FRAME_TOKENS, "none")}
EMULATED_BENCH_SHAPE = (1, 1024, 64, 2)
EMULATED_MAX_TOKENS = 1500  # emulated correctness shapes are cut to this many tokens

# Compile-time tuning constants (plugins/poly_aggregate/polyAggregateCommon.h and the kernel's
# launch bounds) that gpu_check.sh builds besides the defaults and benchmarks side by side.
# tests/test_plugin_poly_aggregate.py checks every variant on the CUDA host emulation.
TUNING_VARIANTS = {
    # causal chunks of 256 tokens (half the serial carry hops) and twice the carry chains
    "lanes64": {"POM_BLOCK_COLS": 4, "POM_BLOCK_LANES": 64},
    # causal: 2 tokens a lane in registers, so 3 blocks fit on an SM
    "occupancy3": {"POM_CAUSAL_TOKENS_PER_LANE": 2, "POM_MIN_BLOCKS_PER_SM": 3},
    # mean/masked: 1024 tokens a block, a quarter of the partial sums
    "split1024": {"POM_REDUCE_TOKENS_PER_SPLIT": 1024},
    # causal: chunks publish their totals at once and look back (no serial chain of hops)
    "lookback": {"POM_CAUSAL_LOOKBACK": 1},
}


# ---------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Target:
    """Where the kernels run: the GPU, or the CPU with the CUDA host emulation (--emulated)."""

    emulated: bool = False

    @property
    def device(self) -> str:
        return "cpu" if self.emulated else "cuda"

    @property
    def bench_shape(self) -> tuple[int, int, int, int]:
        return EMULATED_BENCH_SHAPE if self.emulated else BENCH_SHAPE

    def shapes(self, shapes: list[tuple]) -> list[tuple]:
        """The correctness shapes to run: all on the GPU, shortened when emulated (to a multiple of
        frame_tokens for the extended shapes)."""
        if not self.emulated:
            return shapes
        short = []
        for b, n, c, k, *extended in shapes:
            tokens = min(n, EMULATED_MAX_TOKENS)
            if extended and extended[0]:
                tokens = max(tokens // extended[0], 1) * extended[0]
            short.append((b, tokens, c, k, *extended))
        return short

    def name(self) -> str:
        return "CUDA host emulation on the CPU" if self.emulated else torch.cuda.get_device_name()

    def stream(self) -> int | None:
        return None if self.emulated else torch.cuda.current_stream().cuda_stream

    def synchronize(self) -> None:
        if not self.emulated:
            torch.cuda.synchronize()

    def time_ms(self, fn, iterations=20, warmup=3) -> float:
        """Mean time of `fn`: CUDA events on the GPU, the host clock (one run) when emulated."""
        if self.emulated:
            iterations, warmup = 1, 0
        for _ in range(warmup):
            fn()
        self.synchronize()
        if self.emulated:
            started = time.perf_counter()
            for _ in range(iterations):
                fn()
            return (time.perf_counter() - started) * 1e3 / iterations
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iterations


def to_device(array: np.ndarray | None, device: str = "cuda") -> torch.Tensor | None:
    if array is None:
        return None
    if array.dtype.name == "bfloat16":  # torch cannot read ml_dtypes arrays: move the bits
        return torch.from_numpy(array.view(np.int16)).to(device).view(torch.bfloat16)
    return torch.from_numpy(array).to(device)


def to_float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.float().cpu().numpy().astype(np.float64)


class Kernels:
    def __init__(self, library: str, target: Target):
        self.lib = abi.load(library)
        self.target = target
        self.workspace = torch.empty(0, dtype=torch.uint8, device=target.device)

    def __call__(self, x, degree, variant, mode, coeff=None, mask=None, out=None, frame_tokens=0, rope="none",
                 cos=None, sin=None):
        batch, tokens, channels = x.shape
        dtype = str(x.dtype).removeprefix("torch.")
        per_batch = cos is not None and cos.shape[0] == batch and batch != 1
        # The inputs here are made by this script: side inputs all float32, or all of x's dtype.
        sides = [t for t in (coeff, mask, cos, sin) if t is not None]
        float32_sides = x.dtype != torch.float32 and any(t.dtype == torch.float32 for t in sides)
        desc = abi.make_desc(batch, tokens, channels, degree, variant, mode, dtype, frame_tokens, rope, per_batch,
                             float32_sides)
        size = self.lib.pomPolyAggregateWorkspaceSize(ctypes.byref(desc))
        if self.workspace.numel() < size:
            self.workspace = torch.empty(size, dtype=torch.uint8, device=self.target.device)
        if out is None:
            out = torch.empty(abi.output_shape(batch, tokens, channels, mode), dtype=x.dtype, device=x.device)
        ptr = lambda t: None if t is None else t.data_ptr()
        status = self.lib.pomPolyAggregateLaunchEx(
            ctypes.byref(desc), ptr(x), ptr(coeff), ptr(mask), ptr(cos), ptr(sin), out.data_ptr(),
            self.workspace.data_ptr(), self.workspace.numel(), self.target.stream())
        abi.check(self.lib, status)
        return out


def torch_rope(f, rope, cos, sin):
    """pom_deploy/models/rope.py's rotation of the features, float32: 1d over (k, k + C/2); 2d
    rotates the row half with the first C/4 angle columns, the column half with the next C/4."""
    def rotate_half(t, c, s):
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat([t1 * c - t2 * s, t2 * c + t1 * s], dim=-1)

    cos, sin = cos.float(), sin.float()
    if rope == "1d":
        return rotate_half(f, cos, sin)
    row, col = f.chunk(2, dim=-1)
    cos_row, cos_col = cos.chunk(2, dim=-1)
    sin_row, sin_col = sin.chunk(2, dim=-1)
    return torch.cat([rotate_half(row, cos_row, sin_row), rotate_half(col, cos_col, sin_col)], dim=-1)


def torch_poly_aggregate(x, degree, variant, mode, coeff=None, mask=None, frame_tokens=0, rope="none", cos=None,
                         sin=None):
    """The op in PyTorch, float32 math (the eager / torch.compile baseline)."""
    xf = x.float()
    if variant == "v1":
        chunks = F.gelu(xf).chunk(degree, dim=-1)
        features = [chunks[0]]
        for chunk in chunks[1:]:
            features.append(features[-1] * chunk)
        f = torch.cat(features, dim=-1)
    else:
        a = torch.clamp(F.leaky_relu(xf, 0.01), -0.1, 6.0)
        f = torch.zeros_like(a)
        for k in range(degree - 1, -1, -1):
            f = (f + coeff[:, k].float()) * a
    if rope != "none":
        f = torch_rope(f, rope, cos, sin)
    if mode == "mean":
        y = f.mean(dim=1, keepdim=True)
    elif mode == "causal" and frame_tokens:  # pom_deploy/models/functional.py::_block_causal_mean
        batch, tokens, channels = f.shape
        frames = f.reshape(batch, -1, frame_tokens, channels).sum(dim=2).cumsum(dim=1)
        counts = torch.arange(1, frames.shape[1] + 1, device=f.device, dtype=torch.float32) * frame_tokens
        y = (frames / counts.view(1, -1, 1)).repeat_interleave(frame_tokens, dim=1)
    elif mode == "causal":
        counts = torch.arange(1, f.shape[1] + 1, device=f.device, dtype=torch.float32)[None, :, None]
        y = f.cumsum(dim=1) / counts
    else:
        m = mask.float()[..., None]
        total = m.sum(dim=1, keepdim=True)
        y = torch.where(total != 0, (f * m).sum(dim=1, keepdim=True) / total.clamp_min(1e-30), 0.0)
    return y.to(x.dtype)


def bound_excess(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> float:
    """max(|actual - expected| / bound): <= 1 passes. ``bound`` is ``error_bound``'s (the worst
    case of any float32 implementation on any device), or twice it between two implementations."""
    return float((np.abs(actual - expected) / bound).max()) if expected.size else 0.0


def oracle_and_bound(x, degree, variant, mode, coeff, mask, dtype, frame_tokens=0, rope="none", cos=None,
                     sin=None) -> tuple[np.ndarray, np.ndarray]:
    """The float64 oracle's output and the error bound of any correct implementation."""
    as64 = lambda a: None if a is None else np.asarray(a, dtype=np.float64)
    args = (as64(x), degree, variant, mode, as64(coeff), as64(mask))
    options = {"frame_tokens": frame_tokens, "rope": rope, "cos": as64(cos), "sin": as64(sin)}
    return poly_aggregate(*args, **options), error_bound(*args, dtype=dtype, **options)


# ---------------------------------------------------------------- correctness


def compiler_flags(name: str) -> str:
    """-D flags of a tuning variant."""
    return " ".join(f"-D{macro}={value}" for macro, value in TUNING_VARIANTS[name].items())


def extended_cases(shapes, dtypes=tuple(abi.DTYPES), side_dtype=None) -> list[tuple]:
    """(shape, variant, mode, dtype, frame_tokens, rope, table batch, side dtype) of each extended
    shape: RoPE for v2 (the kernels' RoPE is v2's), frames in mode causal only, each of ``dtypes``;
    v2 only with float32 side inputs (v1 has no coeff, and its mask is covered by v2's)."""
    return [((b, n, c, k), v, m, d, f, rope, tables, side_dtype) for b, n, c, k, f, rope, tables in shapes
            for v in (("v2",) if rope != "none" or side_dtype else abi.VARIANTS)
            for m in (("causal",) if f else abi.MODES) for d in dtypes]


def case_label(shape, frame_tokens=0, rope="none", table_batch=1, side_dtype=None) -> str:
    label = "B{} N{} C{} K{}".format(*shape)
    if rope != "none":
        label += f" rope {rope}" + (" tables/batch" if table_batch > 1 else "")
    label += f" F{frame_tokens}" if frame_tokens else ""
    return label + (f" sides {side_dtype}" if side_dtype else "")


def check_correctness(kernels: Kernels, cpu_lib, shapes=SHAPES, misaligned: bool = True,
                      extended=EXTENDED_SHAPES, side_float32=SIDE_FLOAT32_SHAPES) -> list[tuple]:
    target = kernels.target
    rows = []
    cases = [(s, v, m, d, 0, "none", 1, None) for s in target.shapes(shapes) for v in abi.VARIANTS for m in abi.MODES
             for d in abi.DTYPES]
    cases += extended_cases(target.shapes(extended))
    cases += extended_cases(target.shapes(side_float32), ("float16", "bfloat16"), "float32")
    for shape, variant, mode, dtype, frame_tokens, rope, table_batch, side_dtype in cases:
        batch, tokens, channels, degree = shape
        key = (shape, variant, mode, dtype) + ((frame_tokens, rope, table_batch) if (frame_tokens or rope != "none") else ())
        key += (side_dtype,) if side_dtype else ()
        seed = zlib.crc32(repr(key).encode())
        x, coeff, mask = abi.make_inputs(seed, batch, tokens, channels, degree, variant, mode, dtype, side_dtype)
        cos, sin = (abi.make_rope_tables(seed + 1, table_batch, tokens, channels, side_dtype or dtype)
                    if rope != "none" else (None, None))
        options = {"frame_tokens": frame_tokens, "rope": rope}
        expected, bound = oracle_and_bound(x, degree, variant, mode, coeff, mask, dtype, cos=cos, sin=sin, **options)
        xd, cd, md, cosd, sind = (to_device(a, target.device) for a in (x, coeff, mask, cos, sin))
        first = kernels(xd, degree, variant, mode, cd, md, cos=cosd, sin=sind, **options)
        second = kernels(xd, degree, variant, mode, cd, md, cos=cosd, sin=sind, **options)
        target.synchronize()
        deterministic = torch.equal(first.view(torch.uint8), second.view(torch.uint8))
        oracle = bound_excess(to_float64(first), expected, bound)
        emulated = np.asarray(abi.run_cpu_emulation(cpu_lib, x, degree, variant, mode, coeff, mask, cos=cos, sin=sin, **options),
                              dtype=np.float64)
        # Both within `bound` of the oracle (only erfcf's last bits differ), so within 2 * bound.
        emulation = bound_excess(to_float64(first), emulated, 2 * bound)
        ok = deterministic and oracle <= 1 and emulation <= 1
        rows.append((case_label(shape, frame_tokens, rope, table_batch, side_dtype), variant, mode, dtype, oracle,
                     emulation, deterministic, ok))

    # Misaligned x (offset by one element): the launcher must fall back to scalar loads.
    for mode in abi.MODES if misaligned else ():
        x, _, mask = abi.make_inputs(1, 2, 300, 16, 2, "v1", mode, "float16")
        base = torch.empty(x.size + 1, dtype=torch.float16, device=target.device)
        xd = base[1:].view(x.shape)
        xd.copy_(to_device(x, target.device))
        y = kernels(xd, 2, "v1", mode, None, to_device(mask, target.device))
        target.synchronize()
        expected, bound = oracle_and_bound(x, 2, "v1", mode, None, mask, "float16")
        oracle = bound_excess(to_float64(y), expected, bound)
        rows.append(("misaligned x B2 N300 C16 K2", "v1", mode, "float16", oracle, float("nan"), True, oracle <= 1))
    return rows


# ---------------------------------------------------------------- benchmark


def benchmark_inputs(target: Target) -> dict:
    batch, tokens, channels, degree = target.bench_shape
    dtype, device = torch.float16, target.device
    x = torch.randn(batch, tokens, channels, device=device, dtype=dtype)
    coeff = (torch.rand(channels, degree, device=device) - 0.5).to(dtype)
    mask = (torch.rand(batch, tokens, device=device) < 0.6).to(dtype)
    # RoPE tables gathered per token, shared by the batch (the positions of every row are alike).
    angles = torch.rand(1, tokens, channels // 2, device=device) * 6.283
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    copy_target = torch.empty_like(x)
    # Device copy bandwidth on the same bytes: one read + one write of x.
    copy_gbs = 2 * x.numel() * x.element_size() / (target.time_ms(lambda: copy_target.copy_(x)) * 1e6)
    return {"x": x, "coeff": coeff, "mask": mask, "cos": cos, "sin": sin, "degree": degree, "copy_gbs": copy_gbs}


def op_args(inputs: dict, variant: str, mode: str) -> tuple:
    """(x, degree, variant, mode, coeff, mask) of one op at the benchmark shape."""
    return (inputs["x"], inputs["degree"], variant, mode, inputs["coeff"] if variant == "v2" else None,
            inputs["mask"] if mode == "masked" else None)


def op_options(inputs: dict, frame_tokens: int, rope: str) -> dict:
    """Keyword arguments of the kernels and the PyTorch baseline for frames and RoPE."""
    tables = {"cos": inputs["cos"], "sin": inputs["sin"]} if rope != "none" else {}
    return {"frame_tokens": frame_tokens, "rope": rope, **tables}


def op_label(mode: str, frame_tokens: int = 0, rope: str = "none") -> str:
    return mode + (f" rope {rope}" if rope != "none" else "") + (f" F={frame_tokens}" if frame_tokens else "")


def time_kernel(kernels: Kernels, inputs: dict, variant: str, mode: str, frame_tokens: int = 0,
                rope: str = "none") -> tuple[float, float]:
    """(ms, GB/s) of one launch at the benchmark shape; GB/s counts x + y (+ mask, + cos and sin) once."""
    x, mask = inputs["x"], inputs["mask"]
    args = op_args(inputs, variant, mode)
    options = op_options(inputs, frame_tokens, rope)
    out = torch.empty(abi.output_shape(*x.shape, mode), dtype=x.dtype, device=x.device)
    kernel_ms = kernels.target.time_ms(lambda: kernels(*args, out=out, **options))
    moved = x.numel() * x.element_size() + out.numel() * out.element_size()
    if mode == "masked":
        moved += mask.numel() * mask.element_size()
    if rope != "none":
        moved += 2 * inputs["cos"].numel() * inputs["cos"].element_size()
    return kernel_ms, moved / (kernel_ms * 1e6)


def benchmark(kernels: Kernels, inputs: dict, compile_baseline: bool) -> list[tuple]:
    compiled = torch.compile(torch_poly_aggregate, dynamic=False) if compile_baseline else None
    rows = []
    for variant, mode, frame_tokens, rope in BENCH_OPS:
        args = op_args(inputs, variant, mode)
        options = op_options(inputs, frame_tokens, rope)
        kernel_ms, kernel_gbs = time_kernel(kernels, inputs, variant, mode, frame_tokens, rope)
        eager_ms = kernels.target.time_ms(lambda: torch_poly_aggregate(*args, **options), iterations=5)
        compile_ms = float("nan")
        # torch.compile only for some rows: each compilation takes tens of seconds.
        if compiled is not None and (variant, mode, frame_tokens, rope) in COMPILED_OPS:
            started = time.perf_counter()
            compiled(*args, **options)  # compile outside the timing
            print(f"  torch.compile {variant}/{op_label(mode, frame_tokens, rope)}: compiled in "
                  f"{time.perf_counter() - started:.0f} s")
            compile_ms = kernels.target.time_ms(lambda: compiled(*args, **options), iterations=5)
        rows.append((variant, op_label(mode, frame_tokens, rope), kernel_ms, kernel_gbs,
                     100 * kernel_gbs / inputs["copy_gbs"], eager_ms, compile_ms))
    return rows


def compare_variants(builds: dict[str, Kernels], inputs: dict) -> list[list[str]]:
    """% of copy bandwidth of each build, measured in turns for each op so drift hits all alike."""
    percent = {name: {} for name in builds}
    for op in BENCH_OPS:
        for name, kernels in builds.items():
            percent[name][op] = 100 * time_kernel(kernels, inputs, *op)[1] / inputs["copy_gbs"]
    return [[name, *(f"{percent[name][op]:.0f}%" for op in BENCH_OPS)] for name in builds]


# ---------------------------------------------------------------- report


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        # Wide when piped (gpu_check.sh's output is saved to docs), so that cells do not wrap.
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console(width=None if sys.stdout.isatty() else 200).print(table)
    except ImportError:
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
        print(f"\n{title}")
        for row in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def parse_variant(text: str) -> tuple[str, str, str]:
    name, _, libraries = text.partition("=")
    kernels, _, cpu = libraries.partition(":")
    if name not in TUNING_VARIANTS or not kernels or not cpu:
        raise argparse.ArgumentTypeError(f"expected NAME=KERNELS.so:CPU.so with NAME in {sorted(TUNING_VARIANTS)}")
    return name, kernels, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", help="libpom_deploy_plugins.so")
    parser.add_argument("--cpu", help="libpom_poly_aggregate_cpu_emulation.so (CPU emulation)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="NAME=KERNELS:CPU",
                        help="a tuning variant's kernel and CPU-emulation libraries (repeatable)")
    parser.add_argument("--list-variants", action="store_true", help="print each tuning variant's name and -D flags")
    parser.add_argument("--emulated", action="store_true",
                        help="run on the CPU with libraries built against plugins/tests/cuda_host (checks this script)")
    args = parser.parse_args()
    if args.list_variants:
        for name in TUNING_VARIANTS:
            print(name, compiler_flags(name))
        return 0
    if not args.kernels or not args.cpu:
        parser.error("--kernels and --cpu are required")

    target = Target(emulated=args.emulated)
    print(f"device: {target.name()}  torch {torch.__version__}")
    kernels = Kernels(args.kernels, target)
    cpu_lib = abi.load(args.cpu)

    started = time.perf_counter()
    results = check_correctness(kernels, cpu_lib)
    failures = [r for r in results if not r[-1]]
    print_table(
        f"correctness ({len(results) - len(failures)}/{len(results)} passed, {time.perf_counter() - started:.0f} s;"
        " error columns: max error / error bound, <= 1 passes)",
        ["shape", "variant", "mode", "dtype", "vs oracle", "vs CPU emulation", "deterministic", "ok"],
        [[s, v, m, d, f"{o:.3f}", f"{e:.3f}", str(det), "PASS" if ok else "FAIL"]
         for s, v, m, d, o, e, det, ok in results
         if not ok or s.startswith(("B2 N5000", "misaligned", "B2 N4000")) or "sides" in s],
    )

    inputs = benchmark_inputs(target)
    copy_gbs = inputs["copy_gbs"]
    bench = benchmark(kernels, inputs, compile_baseline=not args.no_compile)
    shape = "B={} N={} C={} K={}".format(*target.bench_shape)
    print_table(
        f"benchmark {shape} float16; device copy bandwidth {copy_gbs:.0f} GB/s (torch copy_)",
        ["variant", "mode", "kernel ms", "kernel GB/s", "% of copy", "eager ms", "torch.compile ms",
         "speed-up vs eager", "speed-up vs compile"],
        [[v, m, f"{k:.3f}", f"{gbs:.0f}", f"{pct:.0f}%", f"{e:.3f}", f"{c:.3f}", f"{e / k:.1f}x", f"{c / k:.1f}x"]
         for v, m, k, gbs, pct, e, c in bench],
    )
    goal = [row for row in bench if row[0] == "v1" and row[1] in ("mean", "causal")]  # the plain ops
    if target.emulated:
        print("emulated: the timings above are of host threads and say nothing about a GPU")
    else:
        print("goal (v1 mean and causal >= 85% of copy bandwidth): "
              + ", ".join(f"{m} {pct:.0f}% {'met' if pct >= 85 else 'NOT met'}" for _, m, _, _, pct, _, _ in goal))

    if args.variant:
        builds = {"defaults": kernels}
        for name, variant_kernels, variant_cpu in args.variant:
            builds[name] = Kernels(variant_kernels, target)
            checked = check_correctness(builds[name], abi.load(variant_cpu), VARIANT_SHAPES, misaligned=False,
                                        extended=VARIANT_EXTENDED_SHAPES, side_float32=())
            bad = [r for r in checked if not r[-1]]
            failures += bad
            print(f"tuning variant {name} ({compiler_flags(name)}): {len(checked) - len(bad)}/{len(checked)} "
                  "correctness checks passed")
        print_table(
            f"tuning variants: % of copy bandwidth, {shape} float16, measured in turns",
            ["build", *(f"{v} {op_label(m, f, r)}" for v, m, f, r in BENCH_OPS)],
            compare_variants(builds, inputs),
        )
    if failures:
        print(f"{len(failures)} correctness check(s) FAILED")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())
