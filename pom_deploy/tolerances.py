"""The one table of default comparison tolerances, by precision: export verification (PyTorch vs
onnxruntime) and ``pom-deploy compare`` (onnxruntime vs TensorRT) both default to it.

An element passes when ``|a - r| <= atol * scale`` or ``|a - r| / |r| <= rtol``, ``scale`` the
largest finite ``|r|`` of that output in that run (``pom_deploy.comparator``): atol is relative to
the output's scale, so that outputs far below 1 are judged as strictly as outputs of scale 1
(an absolute 1e-2 passed anything in an output of scale 1e-3).
Why these values (the reasoning of tests/tolerances.py, Higham ch. 3): a float32 result that
went through a chain of L roundings (dot products and sums in any order, element-wise ops) is
within gamma_L * M of the exact value, gamma_L = L u / (1 - L u), u = 2^-24, M the sum of the
magnitudes of the terms; two implementations are within twice that. With M <= 4 times the
output's scale (LayerNorm'd activations, unit-normal inputs), 1e-4 of the scale is that worst case
for L up to about 200 roundings (one PoM layer of dim <= 64 over ~100 tokens); longer chains stay
far below their worst case in practice (rounding errors add up like sqrt(L), not L), and
tests/tolerances.py derives the worst-case bound of each test model where a guarantee is wanted.
rtol, equal to atol by default, then passes nothing more (|r| <= scale); it is there for a user who
wants a looser element-relative criterion. fp16 graphs round every tensor between ops to float16
(the features, their powers and the sums over tokens stay in float32): about 20 float16 roundings
(2^-11 each) along a model's longest path make 20 * 2^-11 = 0.98% of the output's scale, hence
1e-2; bf16 (2^-8 each) about 13 such roundings, 5%. A NaN or Inf where the reference is finite
fails whatever the tolerance.

The TensorRT comparison used fp32 (1e-4, 1e-3) before this table: its looser rtol made no
difference for outputs below 1 (where atol passes first) and had no bound behind it; an fp32
engine is built without TF32 (Polygraphy's default), so it meets the same float32 reasoning.
"""

from __future__ import annotations

from .errors import PomDeployError

DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}


def tolerances(precision: str, atol: float | None = None, rtol: float | None = None,
               error: type[PomDeployError] = PomDeployError) -> tuple[float, float]:
    """``(atol, rtol)``: the given ones, else the defaults of ``precision`` (atol relative to
    each output's scale, see above)."""
    if precision not in DEFAULT_TOLERANCES:
        raise error(f"unknown precision {precision!r}; expected one of {', '.join(DEFAULT_TOLERANCES)}")
    default_atol, default_rtol = DEFAULT_TOLERANCES[precision]
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)
