"""Run polyAggregateKernel.cu, built against the CUDA host emulation, and compare it bit for bit
with the CPU emulation (polyAggregateCpu.cpp: same blocking, same float32 order).

    python compare_with_cpu_emulation.py --kernels libkernels_host.so --cpu libcpu.so \\
        --shapes '[[2, 300, 12, 2], ...]'

Every variant, mode and dtype of every (batch, tokens, channels, degree) shape, each launched
twice (determinism), plus x offset by one element (the launcher must fall back to scalar
loads). tests/test_plugin_poly_aggregate.py runs it under AddressSanitizer, so an
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


def inputs_for(shape, variant: str, mode: str, dtype: str):
    """The deterministic inputs of one case (the pytest cases use the same seeds)."""
    batch, tokens, channels, degree = shape
    seed = zlib.crc32(repr((tuple(shape), variant, mode, dtype)).encode())
    return abi.make_inputs(seed, batch, tokens, channels, degree, variant, mode, dtype)


def misaligned(array: np.ndarray) -> np.ndarray:
    """A copy of `array` whose data starts one element past an aligned address."""
    base = np.empty(array.size + 1, dtype=array.dtype)
    view = base[1:].reshape(array.shape)
    view[...] = array
    return view


def compare_case(kernels, cpu, shape, variant: str, mode: str, dtype: str, offset: bool = False):
    """(problem, output): problem is None when the host-emulated kernels match the CPU emulation
    bit for bit, twice, else says how they do not; output is the kernels' first result."""
    x, coeff, mask = inputs_for(shape, variant, mode, dtype)
    degree = shape[3]
    if offset:
        x = misaligned(x)
    expected = abi.run_cpu(cpu, x, degree, variant, mode, coeff, mask)
    first = abi.run_host_launch(kernels, x, degree, variant, mode, coeff, mask)
    second = abi.run_host_launch(kernels, x, degree, variant, mode, coeff, mask)
    bits = lambda a: a.view(np.uint8)  # noqa: E731
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
    parser.add_argument("--cpu", required=True, help="polyAggregateCpu.cpp built as a shared library")
    parser.add_argument("--shapes", required=True, help="JSON list of [batch, tokens, channels, degree]")
    args = parser.parse_args()
    kernels, cpu = abi.load(args.kernels), abi.load(args.cpu)
    cases = [(shape, v, m, d, False) for shape in json.loads(args.shapes)
             for v in abi.VARIANTS for m in abi.MODES for d in abi.DTYPES]
    cases += [([2, 300, 16, 2], "v1", m, d, True) for m in abi.MODES for d in ("float16", "bfloat16")]
    failures = []
    for case in cases:
        problem, _ = compare_case(kernels, cpu, *case)
        if problem is not None:
            failures.append(f"{case}: {problem}")
    for failure in failures:
        print("FAIL", failure)
    print(f"{len(cases) - len(failures)} of {len(cases)} cases bit-identical to the CPU emulation")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
