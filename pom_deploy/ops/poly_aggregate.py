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
ROPES = ("none", "1d", "2d")

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


def rope_pairs(channels: int, rope: str) -> tuple[np.ndarray, np.ndarray]:
    """(first, partner) channel of each of the C/2 rotation pairs; pair p uses angle column p.

    1d: (p, p + C/2). 2d: the row half pairs (k, k + C/4), the column half (C/2 + k, C/2 + C/4 + k),
    k < C/4, so the tables' first C/4 columns are the row angles and the next C/4 the column angles.
    """
    if rope not in ROPES[1:]:
        raise ValueError(f"unknown rope {rope!r}, expected one of {ROPES[1:]}")
    multiple = 2 if rope == "1d" else 4
    if channels % multiple:
        raise ValueError(f"rope {rope}: channels ({channels}) must be divisible by {multiple}")
    half = channels // 2 if rope == "1d" else channels // 4  # distance between a pair's channels
    pair = np.arange(channels // 2)
    first = pair // half * 2 * half + pair % half
    return first, first + half


def _rope_tables(cos, sin, shape) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin as float64 (B or 1, N, C/2), checked against the features' shape (B, N, C)."""
    if cos is None or sin is None:
        raise ValueError("rope needs cos and sin tables (B or 1, N, C/2)")
    cos, sin = np.asarray(cos, dtype=np.float64), np.asarray(sin, dtype=np.float64)
    batch, tokens, channels = shape
    if cos.shape != sin.shape or cos.shape[1:] != (tokens, channels // 2) or cos.shape[0] not in (1, batch):
        raise ValueError(f"cos and sin must be ({batch} or 1, {tokens}, {channels // 2}), got {cos.shape} and {sin.shape}")
    return cos, sin


def rope_rotate(f: np.ndarray, rope: str, cos=None, sin=None) -> np.ndarray:
    """Features f (B, N, C) rotated pairwise by the tokens' angles (rotate-half convention), float64.

    f'[a] = f[a] cos - f[b] sin, f'[b] = f[b] cos + f[a] sin for each pair (a, b) of ``rope_pairs``.
    rope "none" returns f unchanged.
    """
    if rope == "none":
        return f
    first, partner = rope_pairs(f.shape[-1], rope)
    cos, sin = _rope_tables(cos, sin, f.shape)
    rotated = np.empty_like(f)
    rotated[..., first] = f[..., first] * cos - f[..., partner] * sin
    rotated[..., partner] = f[..., partner] * cos + f[..., first] * sin
    return rotated


def _frame_ends(tokens: int, frame_tokens: int) -> np.ndarray:
    """Index of the last token of each token's frame (block-causal reads the prefix there)."""
    if frame_tokens <= 0 or tokens % frame_tokens:
        raise ValueError(f"tokens ({tokens}) must be a multiple of frame_tokens ({frame_tokens})")
    return (np.arange(tokens) // frame_tokens + 1) * frame_tokens - 1


def _check_frames(mode: str, frame_tokens: int) -> None:
    if frame_tokens < 0 or (frame_tokens > 0 and mode != "causal"):
        raise ValueError(f"frame_tokens ({frame_tokens}) must be >= 0, and > 0 only with mode 'causal'")


def poly_aggregate(
    x: np.ndarray,
    degree: int,
    variant: str,
    mode: str,
    coeff: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    frame_tokens: int = 0,
    rope: str = "none",
    cos: np.ndarray | None = None,
    sin: np.ndarray | None = None,
) -> np.ndarray:
    """PolyAggregate in float64.

    mean   -> (B, 1, C): mean of f over tokens.
    causal -> (B, N, C): y[:, n] = mean of f[:, :n+1]; with frame_tokens F > 0 (block-causal),
              token n of frame g = n // F gets the mean of f over frames 0..g.
    masked -> (B, 1, C): sum_n m[b, n] f[b, n] / sum_n m[b, n]; 0 where the mask sums to 0.
    With rope "1d" or "2d", f is first rotated by ``rope_rotate`` with cos, sin (B or 1, N, C/2).
    x holds the context tokens only: queries (cross-mixing) stay outside the op.
    """
    _check_frames(mode, frame_tokens)
    f = rope_rotate(poly_features(x, degree, variant, coeff), rope, cos, sin)
    if mode == "mean":
        return f.mean(axis=1, keepdims=True)
    if mode == "causal":
        counts = np.arange(1, f.shape[1] + 1, dtype=np.float64)[None, :, None]
        prefix_means = np.cumsum(f, axis=1) / counts
        return prefix_means[:, _frame_ends(f.shape[1], frame_tokens)] if frame_tokens else prefix_means
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
# The plugin's fields: the node attributes that configure it (frame_tokens and rope are optional,
# left off a node at their defaults 0 and "none").
PLUGIN_FIELDS = ("variant", "degree", "mode", "frame_tokens", "rope")
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


def gamma(n: np.ndarray | int) -> np.ndarray:
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
    return np.abs(poly_features(x, degree, variant, coeff)), gamma(3 * degree + 1) * horner_magnitude


def _rotated_error(magnitude, feature_error, rope, cos, sin) -> tuple[np.ndarray, np.ndarray]:
    """(bound on |f'|, bound on |float32 f' - f'|) after the RoPE rotation of float32 features.

    For a pair (a, b) with angle (c, s) (inputs: exact in float32), f'_a = f_a c - f_b s. The
    float32 features are f_a + e_a, f_b + e_b with |e| <= the feature bound df; computed with two
    products and a difference, each rounded once (an FMA rounds less), the result is
    (f~_a c (1 + t1) - f~_b s (1 + t2)) (1 + t3), |t| <= u, so
        |f'~_a - f'_a| <= |c| df_a + |s| df_b + gamma_2 (|c| (|f_a| + df_a) + |s| (|f_b| + df_b)),
    and |f'_a| <= |f_a| |c| + |f_b| |s|; the partner f'_b = f_b c + f_a s likewise.
    """
    if rope == "none":
        return magnitude, feature_error
    first, partner = rope_pairs(magnitude.shape[-1], rope)
    cos, sin = (np.abs(t) for t in _rope_tables(cos, sin, magnitude.shape))
    reach = magnitude + feature_error
    rotated_magnitude, rotated_error = np.empty_like(magnitude), np.empty_like(feature_error)
    for this, other in ((first, partner), (partner, first)):
        rotated_magnitude[..., this] = magnitude[..., this] * cos + magnitude[..., other] * sin
        rotated_error[..., this] = (cos * feature_error[..., this] + sin * feature_error[..., other]
                                    + gamma(2) * (cos * reach[..., this] + sin * reach[..., other]))
    return rotated_magnitude, rotated_error


def error_bound(
    x: np.ndarray,
    degree: int,
    variant: str,
    mode: str,
    coeff: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    dtype: str = "float32",
    *,
    frame_tokens: int = 0,
    rope: str = "none",
    cos: np.ndarray | None = None,
    sin: np.ndarray | None = None,
) -> np.ndarray:
    """Largest |y - poly_aggregate(...)| of any correct implementation, elementwise.

    "Correct" means: features, the RoPE rotation and every sum in float32 (or better), the sums
    in any order, blocking or thread count, and one rounding to ``dtype`` at the end -- the
    kernels, their CPU emulation, onnxruntime's function body and PyTorch all qualify. A
    worst-case bound (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eqs.
    3.4-3.5 for sums, 5.3 for Horner's rule; the rotation in ``_rotated_error``): it does not
    depend on the CPU, the GPU or the number of threads. The inputs must be the values the
    implementation sees (already rounded to ``dtype``). Block-causal (frame_tokens F > 0) sums
    the (g + 1) F tokens of frames 0..g for token n of frame g: the causal bound of the frame's
    last token.
    """
    _check_frames(mode, frame_tokens)
    magnitude, feature_error = _rotated_error(*_feature_error(x, degree, variant, coeff), rope, cos, sin)
    tokens = magnitude.shape[1]
    reach = magnitude + feature_error  # |float32 features| is at most this
    y = np.abs(poly_aggregate(x, degree, variant, mode, coeff, mask, frame_tokens=frame_tokens, rope=rope,
                              cos=cos, sin=sin))
    if mode == "mean":
        # n - 1 additions, and the division (or multiplication by 1/n)
        bound = feature_error.mean(axis=1, keepdims=True) + gamma(tokens + 1) * reach.mean(axis=1, keepdims=True)
    elif mode == "causal":
        counts = np.arange(1, tokens + 1, dtype=np.float64)[None, :, None]
        bound = (np.cumsum(feature_error, axis=1) + gamma(counts + 1) * np.cumsum(reach, axis=1)) / counts
        if frame_tokens:
            bound = bound[:, _frame_ends(tokens, frame_tokens)]
    elif mode == "masked":
        m = np.abs(np.asarray(mask, dtype=np.float64))[..., None]
        total = m.sum(axis=1, keepdims=True)  # Sum |m|: the float32 total is within gamma_n of it
        numerator = (m * feature_error).sum(axis=1, keepdims=True) + gamma(tokens + 1) * (m * reach).sum(axis=1, keepdims=True)
        exact_total = np.abs(np.asarray(mask, dtype=np.float64).sum(axis=1))[:, None, None]
        low_total = exact_total - gamma(tokens) * total
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.where(exact_total > 0, (numerator + y * gamma(tokens + 1) * total) / np.maximum(low_total, 1e-300), 0.0)
    else:
        raise ValueError(f"unknown mode {mode!r}, expected one of {MODES}")
    return bound + OUTPUT_ROUNDOFF[dtype] * (y + bound) + OUTPUT_TINY[dtype]
