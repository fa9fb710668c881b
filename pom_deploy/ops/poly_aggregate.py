"""Reference (oracle) of the ``PolyAggregate`` operator.

Every implementation of the op -- the ONNX function body, the CUDA kernels, their CPU
emulation, the TensorRT plugin -- is tested against this NumPy code, which computes in
float64 so that it is a reference for float32 as well as fp16/bf16 implementations.
The math is written out in ``docs/poly_aggregate.md``.
"""

from __future__ import annotations

import math

import numpy as np

VARIANTS = ("v1", "v2")
MODES = ("mean", "causal", "masked")

LEAKY_SLOPE = 0.01
CLAMP_MIN = -0.1
CLAMP_MAX = 6.0


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def v2_activation(x: np.ndarray) -> np.ndarray:
    """clamp(leaky_relu(x, 0.01), -0.1, 6) -- upstream ``pom_activation``."""
    return np.clip(np.where(x >= 0, x, LEAKY_SLOPE * x), CLAMP_MIN, CLAMP_MAX)


def poly_features(x: np.ndarray, degree: int, variant: str, coeff: np.ndarray | None = None) -> np.ndarray:
    """Per-token polynomial features f (B, N, C), computed in float64.

    v1: GELU(x) split into ``degree`` equal channel chunks g_0..g_{K-1};
        chunk j of f is g_0 * g_1 * ... * g_j.
    v2: f[..., c] = sum_{k=1..K} coeff[c, k-1] * a^k with a = v2_activation(x).
    """
    x = np.asarray(x, dtype=np.float64)
    if variant == "v1":
        channels = x.shape[-1]
        if channels % degree:
            raise ValueError(f"v1: channels ({channels}) must be divisible by degree ({degree})")
        chunks = np.split(_gelu(x), degree, axis=-1)
        for j in range(1, degree):
            chunks[j] = chunks[j] * chunks[j - 1]
        return np.concatenate(chunks, axis=-1)
    if variant == "v2":
        if coeff is None:
            raise ValueError("v2 needs coefficients (C, K)")
        coeff = np.asarray(coeff, dtype=np.float64)
        if coeff.shape != (x.shape[-1], degree):
            raise ValueError(f"v2: coefficients must be ({x.shape[-1]}, {degree}), got {coeff.shape}")
        a = v2_activation(x)
        acc = np.zeros_like(a)
        for k in range(degree - 1, -1, -1):  # Horner: a * (c0 + a * (c1 + ...))
            acc = (acc + coeff[:, k]) * a
        return acc
    raise ValueError(f"unknown variant {variant!r}, expected one of {VARIANTS}")


def poly_aggregate(
    x: np.ndarray,
    degree: int,
    variant: str,
    mode: str,
    coeff: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """PolyAggregate in float64.

    mean   -> (B, 1, C): mean of f over tokens.
    causal -> (B, N, C): y[:, n] = mean of f[:, :n+1].
    masked -> (B, 1, C): sum_n m[b, n] f[b, n] / sum_n m[b, n]; 0 where the mask sums to 0.
    """
    f = poly_features(x, degree, variant, coeff)
    if mode == "mean":
        return f.mean(axis=1, keepdims=True)
    if mode == "causal":
        counts = np.arange(1, f.shape[1] + 1, dtype=np.float64)[None, :, None]
        return np.cumsum(f, axis=1) / counts
    if mode == "masked":
        if mask is None:
            raise ValueError("masked mode needs a mask (B, N)")
        m = np.asarray(mask, dtype=np.float64)[..., None]
        total = m.sum(axis=1, keepdims=True)
        weighted = (f * m).sum(axis=1, keepdims=True)
        return np.divide(weighted, total, out=np.zeros_like(weighted), where=total != 0)
    raise ValueError(f"unknown mode {mode!r}, expected one of {MODES}")


# How the op appears in ONNX and in TensorRT's plugin registry (see docs/poly_aggregate.md):
# its identity, described once for Python. The C++ plugin's copy is polyAggregateIdentity.h,
# which tests/test_plugin_identity.py checks against this one.
OP_TYPE = "PolyAggregate"
OP_DOMAIN = "pom_deploy"
PLUGIN_NAME = OP_TYPE
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = OP_DOMAIN
PLUGIN_FIELDS = ("variant", "degree", "mode")  # the plugin's fields: the node attributes that configure it
ONNX_ATTRIBUTES = PLUGIN_FIELDS + ("plugin_version", "plugin_namespace")  # the last two pick TensorRT's creator


# ---------------------------------------------------------------- error bound

FLOAT32_ROUNDOFF = 2.0**-24
# Unit roundoff of the output dtype, and half the spacing of its smallest subnormals (the
# absolute error of rounding a tiny value).
OUTPUT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
OUTPUT_TINY = {"float32": 2.0**-150, "float16": 2.0**-25, "bfloat16": 2.0**-134}
# A float32 GELU's absolute error, in units of FLOAT32_ROUNDOFF * (|gelu(t)| + |t| / 2): erf or
# erfc within 4 ulps (CUDA's erff/erfcf: 2-4, glibc: 1-2, PyTorch's vectorized erf: below 2),
# the 1 + erf(t) rounding and the products. The |t| / 2 term is the cancellation of 1 + erf(t)
# for t < 0, which t/2 * erfc(-t/sqrt 2) avoids; the bound holds for both forms.
GELU_ROUNDOFFS = 8


def _gamma(n: np.ndarray | int) -> np.ndarray:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of n float32 roundings."""
    nu = np.asarray(n, dtype=np.float64) * FLOAT32_ROUNDOFF
    return nu / (1.0 - nu)


def _feature_error(x, degree, variant, coeff) -> tuple[np.ndarray, np.ndarray]:
    """(|f|, bound on |f32 features - f|) per token and channel, in float64."""
    x = np.asarray(x, dtype=np.float64)
    if variant == "v1":
        g = np.split(_gelu(x), degree, axis=-1)
        t = np.split(np.abs(x), degree, axis=-1)
        magnitude, perturbed, parts_abs, parts_err = 1.0, 1.0, [], []
        for j in range(degree):
            error = GELU_ROUNDOFFS * FLOAT32_ROUNDOFF * (np.abs(g[j]) + t[j] / 2)
            magnitude = magnitude * np.abs(g[j])
            # every factor at its worst, and one rounding per product
            perturbed = perturbed * (np.abs(g[j]) + error) * (1.0 + FLOAT32_ROUNDOFF if j else 1.0)
            parts_abs.append(magnitude)
            parts_err.append(perturbed - magnitude)
        return np.concatenate(parts_abs, axis=-1), np.concatenate(parts_err, axis=-1)
    a = np.abs(v2_activation(x))
    c = np.abs(np.asarray(coeff, dtype=np.float64))
    horner_magnitude = sum(c[:, k] * a ** (k + 1) for k in range(degree))
    # Horner's rule: 2 roundings per degree; the activation's rounding (x * 0.01): a^k moves by k u.
    return np.abs(poly_features(x, degree, variant, coeff)), _gamma(3 * degree + 1) * horner_magnitude


def error_bound(
    x: np.ndarray,
    degree: int,
    variant: str,
    mode: str,
    coeff: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    dtype: str = "float32",
) -> np.ndarray:
    """Largest |y - poly_aggregate(...)| of any correct implementation, elementwise.

    "Correct" means: features and every sum in float32 (or better), the sums in any order,
    blocking or thread count, and one rounding to ``dtype`` at the end -- the kernels, their CPU
    emulation, onnxruntime's function body and PyTorch all qualify. A worst-case bound (Higham,
    Accuracy and Stability of Numerical Algorithms, 2nd ed., eqs. 3.4-3.5 for sums, 5.3 for
    Horner's rule): it does not depend on the CPU, the GPU or the number of threads. The inputs
    must be the values the implementation sees (already rounded to ``dtype``).
    """
    magnitude, feature_error = _feature_error(x, degree, variant, coeff)
    tokens = magnitude.shape[1]
    reach = magnitude + feature_error  # |float32 features| is at most this
    y = np.abs(poly_aggregate(x, degree, variant, mode, coeff, mask))
    if mode == "mean":
        # n - 1 additions, and the division (or multiplication by 1/n)
        bound = feature_error.mean(axis=1, keepdims=True) + _gamma(tokens + 1) * reach.mean(axis=1, keepdims=True)
    elif mode == "causal":
        counts = np.arange(1, tokens + 1, dtype=np.float64)[None, :, None]
        bound = (np.cumsum(feature_error, axis=1) + _gamma(counts + 1) * np.cumsum(reach, axis=1)) / counts
    elif mode == "masked":
        m = np.abs(np.asarray(mask, dtype=np.float64))[..., None]
        total = m.sum(axis=1, keepdims=True)  # Sum |m|: the float32 total is within gamma_n of it
        numerator = (m * feature_error).sum(axis=1, keepdims=True) + _gamma(tokens + 1) * (m * reach).sum(axis=1, keepdims=True)
        exact_total = np.abs(np.asarray(mask, dtype=np.float64).sum(axis=1))[:, None, None]
        low_total = exact_total - _gamma(tokens) * total
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.where(exact_total > 0, (numerator + y * _gamma(tokens + 1) * total) / np.maximum(low_total, 1e-300), 0.0)
    else:
        raise ValueError(f"unknown mode {mode!r}, expected one of {MODES}")
    return bound + OUTPUT_ROUNDOFF[dtype] * (y + bound) + OUTPUT_TINY[dtype]
