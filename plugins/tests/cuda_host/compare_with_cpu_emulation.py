"""Run polyAggregateKernel.cu, built against the CUDA host emulation, and compare it bit for bit
with the CPU emulation (plugins/tests/polyAggregateCpuEmulation.cpp: same blocking, same float32 order).

    python compare_with_cpu_emulation.py --kernels libkernels_host.so --cpu libcpu.so \\
        --shapes '[[2, 300, 12, 2], ...]' [--extended '[[2, 300, 16, 2, 0, "1d", 2], ...]']

Every variant, mode and dtype of every (batch, tokens, channels, degree) shape, each launched
twice (determinism), plus x offset by one element (the launcher must fall back to scalar
loads). --extended adds RoPE and block-causal cases, [batch, tokens, channels, degree,
frame_tokens, rope, batch of the cos/sin tables] each (see ``extended_cases``), and cos/sin
offset by one element, and fp16/bf16 x with float32 coeff, mask, cos and sin.
tests/test_plugin_poly_aggregate.py runs it under AddressSanitizer, so an
out-of-bounds access in a kernel aborts it. Needs pom-deploy importable (installed, or this
checkout on the path) for its ctypes binding of the C ABI.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib

import numpy as np

from pom_deploy.ops import poly_aggregate_abi as abi


def _seed(shape, variant: str, mode: str, dtype: str, frame_tokens: int = 0, rope: str = "none", table_batch: int = 1):
    key = (tuple(shape), variant, mode, dtype)
    if (frame_tokens, rope) != (0, "none"):
        key += (frame_tokens, rope, table_batch)
    return zlib.crc32(repr(key).encode())


def inputs_for(shape, variant: str, mode: str, dtype: str, frame_tokens: int = 0, rope: str = "none",
               table_batch: int = 1, side_dtype: str | None = None):
    """The deterministic inputs (x, coeff, mask) of one case (the pytest cases use the same seeds);
    coeff and mask in ``side_dtype`` (default: x's)."""
    batch, tokens, channels, degree = shape
    seed = _seed(shape, variant, mode, dtype, frame_tokens, rope, table_batch)
    return abi.make_inputs(seed, batch, tokens, channels, degree, variant, mode, dtype, side_dtype)


def tables_for(shape, variant: str, mode: str, dtype: str, frame_tokens: int = 0, rope: str = "none",
               table_batch: int = 1, side_dtype: str | None = None):
    """The case's RoPE tables (cos, sin), (table_batch, N, C/2), in ``side_dtype`` (default: x's);
    (None, None) without RoPE."""
    if rope == "none":
        return None, None
    seed = _seed(shape, variant, mode, dtype, frame_tokens, rope, table_batch) + 1
    return abi.make_rope_tables(seed, table_batch, shape[1], shape[2], side_dtype or dtype)


def extended_cases(specs):
    """(shape, variant, mode, dtype, options) for each [B, N, C, K, frame_tokens, rope, table_batch]
    spec: every dtype; RoPE cases for v2 only (the kernels' RoPE is v2's, as upstream's PoMRoPE),
    frame cases in mode causal only (block-causal), other cases in every mode."""
    cases = []
    for batch, tokens, channels, degree, frame_tokens, rope, table_batch in specs:
        options = {"frame_tokens": frame_tokens, "rope": rope, "table_batch": table_batch}
        for variant in ("v2",) if rope != "none" else abi.VARIANTS:
            for mode in ("causal",) if frame_tokens else abi.MODES:
                for dtype in abi.DTYPES:
                    cases.append(((batch, tokens, channels, degree), variant, mode, dtype, options))
    return cases


def misaligned(array: np.ndarray, elements: int = 1) -> np.ndarray:
    """A copy of `array` whose data starts `elements` elements past an aligned address."""
    base = np.empty(array.size + elements, dtype=array.dtype)
    view = base[elements:].reshape(array.shape)
    view[...] = array
    return view


def compare_case(kernels, cpu, shape, variant: str, mode: str, dtype: str, offset: bool = False,
                 frame_tokens: int = 0, rope: str = "none", table_batch: int = 1, misaligned_tables: int = 0,
                 side_dtype: str | None = None):
    """(problem, output): problem is None when the host-emulated kernels match the CPU emulation
    bit for bit, twice, else says how they do not; output is the kernels' first result.
    misaligned_tables: cos and sin start that many elements past an aligned address; side_dtype:
    coeff, mask, cos and sin in that dtype (float32 under a 16-bit x) rather than x's."""
    options = {"frame_tokens": frame_tokens, "rope": rope, "table_batch": table_batch, "side_dtype": side_dtype}
    x, coeff, mask = inputs_for(shape, variant, mode, dtype, **options)
    cos, sin = tables_for(shape, variant, mode, dtype, **options)
    degree = shape[3]
    if offset:
        x = misaligned(x)
    if misaligned_tables:
        cos, sin = misaligned(cos, int(misaligned_tables)), misaligned(sin, int(misaligned_tables))
    extra = {"frame_tokens": frame_tokens, "rope": rope, "cos": cos, "sin": sin}
    expected = abi.run_cpu_emulation(cpu, x, degree, variant, mode, coeff, mask, **extra)
    first = abi.run_host_launch(kernels, x, degree, variant, mode, coeff, mask, **extra)
    second = abi.run_host_launch(kernels, x, degree, variant, mode, coeff, mask, **extra)
    bits = lambda a: a.view(np.uint8)
    if not np.array_equal(bits(first), bits(second)):
        return "two launches differ (not deterministic)", first
    if not np.array_equal(bits(first), bits(expected)):
        word = np.uint16 if first.itemsize == 2 else np.uint32
        differing = int((first.view(word) != expected.view(word)).sum())
        return f"{differing} of {first.size} outputs differ from the CPU emulation", first
    return None, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", required=True, help="polyAggregateKernel.cu built with the host emulation")
    parser.add_argument("--cpu", required=True, help="polyAggregateCpuEmulation.cpp built as a shared library")
    parser.add_argument("--shapes", required=True, help="JSON list of [batch, tokens, channels, degree]")
    parser.add_argument("--extended", default="[]",
                        help="JSON list of [batch, tokens, channels, degree, frame_tokens, rope, table batch]")
    args = parser.parse_args()
    kernels, cpu = abi.load(args.kernels), abi.load(args.cpu)
    cases = [(shape, v, m, d, {}) for shape in json.loads(args.shapes)
             for v in abi.VARIANTS for m in abi.MODES for d in abi.DTYPES]
    cases += [([2, 300, 16, 2], "v1", m, d, {"offset": True}) for m in abi.MODES for d in ("float16", "bfloat16")]
    extended = json.loads(args.extended)
    cases += extended_cases(extended)
    if extended:  # cos and sin one element off: scalar loads of the tables
        cases += [([2, 300, 16, 2], "v2", m, d, {"rope": "1d", "misaligned_tables": True})
                  for m in abi.MODES for d in ("float16", "bfloat16")]
        # float32 coeff, mask, cos and sin under a 16-bit x (4-byte table elements), tables per batch row.
        cases += [([2, 300, 16, 2], "v2", m, d, {"rope": "1d", "table_batch": 2, "side_dtype": "float32"})
                  for m in abi.MODES for d in ("float16", "bfloat16")]
    failures = []
    for shape, variant, mode, dtype, options in cases:
        problem, _ = compare_case(kernels, cpu, shape, variant, mode, dtype, **options)
        if problem is not None:
            failures.append(f"{(shape, variant, mode, dtype, options)}: {problem}")
    for failure in failures:
        print("FAIL", failure)
    print(f"{len(cases) - len(failures)} of {len(cases)} cases bit-identical to the CPU emulation")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
