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


# How the op appears in ONNX and in TensorRT's plugin registry (see docs/poly_aggregate.md).
OP_TYPE = "PolyAggregate"
OP_DOMAIN = "pom_deploy"
PLUGIN_NAME = OP_TYPE
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = OP_DOMAIN
