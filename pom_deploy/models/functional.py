"""The PoM math as export-friendly functions shared by both layer generations.

No Python branching on tensor values, bounds as Python floats (an int clamp bound makes
``torch.onnx.export(dynamo=True)`` fail), polynomials by Horner's rule so that no
(B, N, C, degree) tensor exists, and the features, their powers and every reduction over
tokens in float32 whatever the model dtype: a product of features overflows float16 (65,504)
as soon as a token is an outlier -- also a token a padding mask excludes, whose Inf then turns
the masked sum into NaN -- while the float32 model stays finite. The PolyAggregate kernels
compute the same way (docs/poly_aggregate.md); only the aggregated mean goes back to the
model dtype.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

ACCUM_DTYPE = torch.float32



@dataclass(frozen=True)
class Rotation:
    """RoPE of the features before aggregation: ``kind`` "1d" or "2d", and the context tokens'
    angle tables gathered by position, ``cos`` and ``sin`` (B or 1, N, C/2), as PolyAggregate's
    inputs (2-D: the row angles' C/4 columns, then the column angles')."""

    kind: str
    cos: torch.Tensor
    sin: torch.Tensor


# (x, coefficients or None, mask, variant, degree, rotation or None, owner) -> aggregated
# (B, 1 or N, C), or None when the fused op does not cover the layer. Set by
# ``pom_deploy.ops.fused_ops`` while exporting with fused ops, so that the layers here need not
# know the op layer above them; ``owner`` (the calling layer) lets it say which layers it left.
FusedAggregate = Callable[[torch.Tensor, Optional[torch.Tensor], object, str, int, Optional[Rotation], object],
                          Optional[torch.Tensor]]
_FUSED_AGGREGATE: contextvars.ContextVar[FusedAggregate | None] = contextvars.ContextVar("pom_deploy_fused_aggregate", default=None)


@contextlib.contextmanager
def fused_aggregate(implementation: FusedAggregate):
    """Within the block, ``poly_aggregate`` tries ``implementation`` first."""
    token = _FUSED_AGGREGATE.set(implementation)
    try:
        yield
    finally:
        _FUSED_AGGREGATE.reset(token)


def poly_aggregate(x: torch.Tensor, coeff: torch.Tensor | None, mask, variant: str, degree: int,
                   features: Callable[[torch.Tensor], torch.Tensor], rotation: Rotation | None = None,
                   owner: object = None) -> torch.Tensor:
    """Polynomial ``features(x)``, rotated by ``rotation`` if given, and their mean over tokens:
    one fused op when one is active and covers the layer, else the decomposed ops."""
    fused = _FUSED_AGGREGATE.get()
    result = fused(x, coeff, mask, variant, degree, rotation, owner) if fused is not None else None
    return result if result is not None else aggregate(rotate(features(x), rotation), mask)


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (k, k + D/2) of x by the given angles (rotate-half convention)."""
    x1, x2 = _halves(x)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rotate(x: torch.Tensor, rotation: Rotation | None) -> torch.Tensor:
    """x rotated pairwise by ``rotation``'s tables (1-D: pairs (k, k + C/2); 2-D: each half of the
    channels rotate-half by its own half of the tables); x itself without a rotation."""
    if rotation is None:
        return x
    if rotation.kind == "1d":
        return rotate_half(x, rotation.cos, rotation.sin)
    (x_row, x_col), (row_cos, col_cos), (row_sin, col_sin) = (_halves(t) for t in (x, rotation.cos, rotation.sin))
    return torch.cat([rotate_half(x_row, row_cos, row_sin), rotate_half(x_col, col_cos, col_sin)], dim=-1)


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of the last dim, as slices: ``chunk`` of a dynamic width exports as a
    SplitToSequence the exporter's constant folding rejects (PolyAggregate's function bodies)."""
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


@dataclass(frozen=True)
class BlockCausalMask:
    """Block-causal mixing over frames of ``frame_tokens`` tokens, without an N x N mask.

    Token i of frame f sees every token of frames 0..f. Equivalent to the (B, N, N) 0/1 mask
    that upstream builds, but computed as a prefix mean over frame sums.
    """

    frame_tokens: int


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """16-bit features computed in float32; float64 (references, oracles) stays float64."""
    return x.to(torch.promote_types(x.dtype, ACCUM_DTYPE))


def v1_features(x: torch.Tensor, degree: int) -> torch.Tensor:
    """v1: GELU(x) split into ``degree`` channel chunks, multiplied cumulatively; in float32 at least."""
    chunks = list(F.gelu(_at_least_float32(x)).unflatten(-1, (degree, -1)).unbind(-2))  # a fixed count of equal chunks, any width
    for j in range(1, degree):
        chunks[j] = chunks[j] * chunks[j - 1]
    return torch.cat(chunks, dim=-1)


def v2_activation(x: torch.Tensor) -> torch.Tensor:
    """clamp(leaky_relu(x, 0.01), -0.1, 6) with float bounds (exportable)."""
    return torch.clamp(F.leaky_relu(x, 0.01), min=-0.1, max=6.0)


def v2_features(x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
    """v2: sum_k coeff[:, k-1] * act(x)^k, k = 1..K, by Horner's rule; in float32 at least."""
    a = v2_activation(_at_least_float32(x))
    coeff = coeff.to(a.dtype)
    degree = coeff.shape[-1]
    acc = coeff[:, degree - 1]
    for k in range(degree - 2, -1, -1):
        acc = acc * a + coeff[:, k]
    return acc * a


def aggregate(features: torch.Tensor, mask=None) -> torch.Tensor:
    """Mean of per-token features over the context, in float32.

    mask: None -> (B, 1, C); "causal" -> (B, N, C) prefix mean; ``BlockCausalMask`` ->
    (B, N, C) prefix mean over whole frames; (B, N) padding mask -> (B, 1, C);
    (B, T, N) mask -> (B, T, C). Rows whose mask is all zero give 0.
    """
    f = features.to(ACCUM_DTYPE)
    if mask is None:
        return token_mean(f)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f'unsupported mask {mask!r}: expected None, "causal" or a tensor')
        counts = torch.arange(1, f.shape[1] + 1, device=f.device, dtype=ACCUM_DTYPE)
        return f.cumsum(dim=1) / counts.unsqueeze(-1)
    if isinstance(mask, BlockCausalMask):
        return _block_causal_mean(f, mask.frame_tokens)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"unsupported mask of type {type(mask).__name__}")
    m = mask.to(ACCUM_DTYPE)
    if m.dim() == 2:
        weighted = torch.bmm(m.unsqueeze(1), f)
        total = m.sum(dim=1).view(-1, 1, 1)
    elif m.dim() == 3:
        weighted = torch.bmm(m, f)
        total = m.sum(dim=2, keepdim=True)
    else:
        raise ValueError(f"unsupported mask rank {m.dim()}: expected (B, N) or (B, T, N)")
    return weighted / total.clamp_min(torch.finfo(ACCUM_DTYPE).tiny)


def token_mean(f: torch.Tensor) -> torch.Tensor:
    """Mean over tokens (B, N, C) -> (B, 1, C) as a (1 x N) @ (N x C) product.

    Same value as ``f.mean(1)``; exported, onnxruntime's CPU MatMul runs it several times
    faster than ReduceMean over the token axis (docs/benchmarks.md).
    """
    return torch.matmul(f.new_ones(1, 1, f.shape[1]), f) / f.shape[1]


def single_context(mask) -> bool:
    """Whether ``aggregate`` gives one context vector per sequence (B, 1, C) for this mask."""
    return mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2)


def _block_causal_mean(f: torch.Tensor, frame_tokens: int) -> torch.Tensor:
    """Frame sums (B, frames, C), prefix-summed by a lower-triangular frames x frames matrix
    product rather than a cumulative sum: TensorRT before 10.8 imports ONNX CumSum as a loop, and
    frames are few. Any order of a float32 sum meets the same error bound."""
    batch, tokens, channels = f.shape
    sums = f.reshape(batch, -1, frame_tokens, channels).sum(dim=2)
    index = torch.arange(sums.shape[1], device=f.device)
    lower = (index.unsqueeze(1) >= index.unsqueeze(0)).to(sums.dtype)  # lower[g, h] = 1 for h <= g
    counts = (index + 1).to(ACCUM_DTYPE) * frame_tokens
    means = torch.matmul(lower, sums) / counts.view(1, -1, 1)
    return means.repeat_interleave(frame_tokens, dim=1)


def chunk_token_counts(mask, tokens: int, device=None) -> torch.Tensor:
    """(1, rows) float32: how many of a chunk's tokens each row of ``aggregate(f, mask)`` of that
    chunk averages (mask None: one row, the whole chunk; "causal": t + 1; ``BlockCausalMask``:
    the tokens of the frames up to the row's own)."""
    if mask is None:
        return torch.full((1, 1), tokens, dtype=ACCUM_DTYPE, device=device)
    index = torch.arange(tokens, device=device)
    if isinstance(mask, BlockCausalMask):
        counts = (torch.div(index, mask.frame_tokens, rounding_mode="floor") + 1) * mask.frame_tokens
    else:
        counts = index + 1
    return counts.to(ACCUM_DTYPE).unsqueeze(0)


def merge_running_mean(mean: torch.Tensor, count: torch.Tensor, chunk_means: torch.Tensor,
                       chunk_counts: torch.Tensor) -> torch.Tensor:
    """Each row of a chunk's aggregate folded into the running mean of the stream before it.

    mean (B, 1, C) float32 over ``count`` (B, 1) int64 tokens seen; chunk_means (B, R, C) means
    over ``chunk_counts`` (1, R) of the chunk's tokens. Row r: the token-weighted mean of both,
    written as an increment (mean + w (chunk - mean)) so that it stays accurate over very long
    streams; the last row (the whole chunk) is the next state.
    """
    weight = chunk_counts / (count.to(ACCUM_DTYPE) + chunk_counts)  # (B, R)
    return mean + weight.unsqueeze(-1) * (chunk_means - mean)


def initial_state(batch: int, channels: int, device=None) -> dict[str, torch.Tensor]:
    """The zero state of one PoM layer: nothing seen yet."""
    return {
        "mean": torch.zeros(batch, 1, channels, dtype=ACCUM_DTYPE, device=device),
        "count": torch.zeros(batch, 1, dtype=torch.int64, device=device),
    }
