"""Reference PoM layers, numerically identical to upstream ``pom`` and loading its weights.

Parameter and buffer names are upstream's, so ``load_state_dict`` takes upstream
checkpoints unchanged. Differences, all deliberate and documented in docs/upstream.md:
``state_forward`` weights the running mean by tokens (upstream counts calls), RoPE
layers rotate positions in streaming too, masks that sum to zero give 0 instead of NaN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArchitectureError
from . import functional as P


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ArchitectureError(message)


class PoMLayer(nn.Module):
    """What both generations share: aggregate context features, then gate them by the query."""

    dim: int
    order: int
    order_expand: int

    @property
    def state_channels(self) -> int:
        """Channels of the running mean carried in streaming."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor arguments, enough to rebuild the layer."""
        raise NotImplementedError

    variant: str  # "v1" or "v2": which PolyAggregate math the layer uses

    def _projections(self, xq: torch.Tensor, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected context before the polynomial, query selection signal)."""
        raise NotImplementedError

    def _coefficients(self) -> torch.Tensor | None:
        return None

    def _features(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _select(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _aggregate(self, h: torch.Tensor, mask) -> torch.Tensor:
        """Polynomial + mean over tokens; one ``PolyAggregate`` op when exporting with fused ops."""
        return P.poly_aggregate(h, self._coefficients(), mask, self.variant, self.order, self._features, owner=self)

    def _output(self, s: torch.Tensor, h: torch.Tensor, single_context: bool) -> torch.Tensor:
        """ag_proj(select(s, h)); ``single_context``: h is one vector per sequence (B, 1, C)."""
        return self.ag_proj(self._select(s, h))

    def forward(self, xq: torch.Tensor, xc: torch.Tensor | None = None, mask=None) -> torch.Tensor:
        if self._stream is not None:
            return self._stream.step(self, xq, xc, mask=mask)
        h, s = self._projections(xq, xq if xc is None else xc)
        return self._output(s, self._aggregate(h, mask).to(s.dtype), P.single_context(mask))

    # Set by ``pom_deploy.streaming.stream_layers``: forward then runs one streaming step
    # with explicit state (how step graphs are exported from any model's forward).
    _stream = None

    def state_forward(
        self, xq: torch.Tensor, xc: torch.Tensor | None = None, state: dict[str, torch.Tensor] | None = None,
        mask=None, **positions,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One streaming step that keeps the layer's own masking inside the chunk.

        ``mask`` as ``forward`` takes it: "causal", each token sees the past and the chunk's
        tokens up to itself; ``BlockCausalMask(F)``, the chunk is whole frames, each seeing the
        past, itself and the chunk's earlier frames; None, the chunk is one block (upstream's
        frame loop). With a causal or block-causal mask, any chunking of a sequence gives
        ``forward(x, mask=mask)`` of the whole and the same final state, up to float32 rounding.
        ``state`` is ``{"mean": (B, 1, C) float32, "count": (B, 1) int64}`` or None for a new stream.
        """
        xc = xq if xc is None else xc
        check_stream_mask(mask, xc.shape[1])
        if state is None:
            state = P.initial_state(xc.shape[0], self.state_channels, xc.device)
        chunk_means, s = self._stream_chunk(xq, xc, state["count"], mask, **positions)
        counts = P.chunk_token_counts(mask, xc.shape[1], xc.device)
        means = P.merge_running_mean(state["mean"], state["count"], chunk_means, counts)
        new_state = {"mean": means[:, -1:], "count": state["count"] + xc.shape[1]}
        return self._output(s, means.to(s.dtype), mask is None), new_state

    def _stream_chunk(self, xq, xc, count, mask):
        """(the chunk's features aggregated under ``mask`` in float32, selection signal);
        ``count`` (B, 1) is the number of tokens already seen."""
        h, s = self._projections(xq, xc)
        return self._aggregate(h, mask), s


def check_stream_mask(mask, tokens) -> None:
    """Masks a stream can keep exactly: none, token-causal, or block-causal over whole frames."""
    if isinstance(mask, P.BlockCausalMask):
        if tokens % mask.frame_tokens:
            raise ArchitectureError(f"a chunk of {tokens} tokens splits a frame: block-causal streams take whole "
                                    f"frames of {mask.frame_tokens} tokens")
    elif mask is not None and not (isinstance(mask, str) and mask == "causal"):
        raise ArchitectureError(f"a layer called with a {type(mask).__name__} mask cannot stream: its mean takes the "
                                "whole sequence (streams keep causal and block-causal masks)")


class PoMv1(PoMLayer):
    """PoM of arXiv 2411.12663 v1: ``PoM(dim, degree, expand, bias=True)``."""

    variant = "v1"

    def __init__(self, dim: int, degree: int, expand: int, bias: bool = True):
        super().__init__()
        _require(dim > 0 and degree > 0 and expand > 0, f"dim, degree and expand must be positive, got {dim}, {degree}, {expand}")
        self.dim, self.order, self.order_expand, self.bias = dim, degree, expand, bias
        width = degree * expand * dim
        self.po_proj = nn.Linear(dim, width, bias=bias)
        self.se_proj = nn.Linear(dim, width, bias=bias)
        self.ag_proj = nn.Linear(width, dim, bias=bias)

    @property
    def state_channels(self) -> int:
        return self.order * self.order_expand * self.dim

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "degree": self.order, "expand": self.order_expand, "bias": self.bias}

    def _projections(self, xq, xc):
        return self.po_proj(xc), self.se_proj(xq)

    def _features(self, h):
        return P.v1_features(h, self.order)

    def _select(self, s, h):
        return torch.sigmoid(s) * h


class PoMv2(PoMLayer):
    """PoM of upstream main (CVPR'26): ``PoM(dim, degree, expand, n_groups, n_sel_heads, bias=False)``."""

    variant = "v2"

    def __init__(self, dim: int, degree: int, expand: int, n_groups: int = 1, n_sel_heads: int = 1, bias: bool = False):
        super().__init__()
        _require(dim > 0 and degree > 0 and expand > 0, f"dim, degree and expand must be positive, got {dim}, {degree}, {expand}")
        _require(n_groups > 0 and dim % n_groups == 0, f"dim ({dim}) must be divisible by n_groups ({n_groups})")
        _require(n_sel_heads >= 0, f"n_sel_heads must be >= 0, got {n_sel_heads}")
        _require(
            n_sel_heads <= 1 or dim * expand % n_sel_heads == 0,
            f"dim * expand ({dim * expand}) must be divisible by n_sel_heads ({n_sel_heads})",
        )
        self.dim, self.order, self.order_expand = dim, degree, expand
        self.n_groups, self.n_sel_heads, self.bias = n_groups, n_sel_heads, bias
        self.head_dim = dim * expand // max(n_sel_heads, 1)
        self._po_dim = expand * dim
        self._se_dim = n_sel_heads if n_sel_heads > 1 else expand * dim
        if n_groups > 1:
            self.po_proj = nn.Conv1d(dim, self._po_dim, kernel_size=1, bias=bias, groups=n_groups)
            self.se_proj = nn.Linear(dim, self._se_dim, bias=True)
        else:
            self.qc_proj = nn.Linear(dim, self._po_dim + self._se_dim, bias=False)
            self.se_bias = nn.Parameter(torch.zeros(self._se_dim))
        self.po_coeff = nn.Parameter(torch.randn(self._po_dim, degree).clamp(-0.001, 0.001))
        self.ag_proj = nn.Linear(self._po_dim, dim, bias=bias)

    @property
    def state_channels(self) -> int:
        return self._po_dim

    def config(self) -> dict[str, Any]:
        return {
            "dim": self.dim, "degree": self.order, "expand": self.order_expand,
            "n_groups": self.n_groups, "n_sel_heads": self.n_sel_heads, "bias": self.bias,
        }

    def _projections(self, xq, xc):
        """(projected context, selection signal). ``qc_proj`` holds both projections, as
        upstream's; they run as two GEMMs on its row blocks, so that no Split copies the
        (B, N, C) half of one fused GEMM's output (docs/benchmarks.md, section 3)."""
        if self.n_groups > 1:
            h = self.po_proj(xc.transpose(1, 2)).transpose(1, 2)
            return h, F.hardsigmoid(self.se_proj(xq))
        w = self.qc_proj.weight
        h = F.linear(xc, w[: self._po_dim])
        return h, F.hardsigmoid(F.linear(xq, w[self._po_dim :]) + self.se_bias)

    def _coefficients(self):
        return self.po_coeff

    def _features(self, h):
        return P.v2_features(h, self.po_coeff)

    def _select(self, s, h):
        if self.n_sel_heads <= 1:
            return s * h
        heads = h.unflatten(-1, (self.n_sel_heads, self.head_dim))
        return (s.unsqueeze(-1) * heads).flatten(-2)

    def _output(self, s, h, single_context):
        """With several selection heads and one context vector per sequence, ag_proj(s (x) h)
        is s @ M with M[b, k] = h[b, head k] @ W_ag[:, head k]^T: half the layer's FLOPs and no
        (B, N, C) tensor (docs/benchmarks.md, section 1.3). Equal up to float rounding."""
        if not single_context or self.n_sel_heads <= 1:
            return super()._output(s, h, single_context)
        heads = h.reshape(h.shape[0], self.n_sel_heads, self.head_dim)
        weight = self.ag_proj.weight.t().reshape(self.n_sel_heads, self.head_dim, self.dim)
        per_head = torch.matmul(heads.unsqueeze(2), weight).squeeze(2)  # (B, heads, dim); MatMul takes bf16, Einsum not
        y = torch.bmm(s, per_head)
        return y if self.ag_proj.bias is None else y + self.ag_proj.bias
