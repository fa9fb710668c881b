"""PoMv2 with rotary position embedding, as upstream ``PoMRoPE``.

The rotation is applied to the per-token polynomial features (after the nonlinearity,
before aggregation) and to the query's selection signal. Positions are graph inputs in
export; in streaming, 1-D positions continue from the number of tokens already seen.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArchitectureError
from . import functional as P
from .functional import rotate_half  # noqa: F401 - re-exported: the convention, importable with the layer
from .layers import PoMv2, _require


def precompute_freqs_1d(dim: int, max_seq_len: int, base: float = 10000.0):
    half = dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def precompute_freqs_2d(dim: int, max_h: int, max_w: int, base: float = 10000.0):
    quarter = dim // 4
    inv_freq = 1.0 / (base ** (torch.arange(0, quarter, dtype=torch.float32) / quarter))
    rows = torch.outer(torch.arange(max_h, dtype=torch.float32), inv_freq)
    cols = torch.outer(torch.arange(max_w, dtype=torch.float32), inv_freq)
    return rows.cos(), rows.sin(), cols.cos(), cols.sin()


class PoMv2RoPE(PoMv2):
    """``PoMRoPE(dim, degree, expand, n_groups, n_sel_heads, bias, max_seq_len, max_h, max_w, rope_base, rope_2d)``."""

    def __init__(
        self, dim: int, degree: int, expand: int, n_groups: int = 1, n_sel_heads: int = 1, bias: bool = False,
        max_seq_len: int = 4096, max_h: int = 64, max_w: int = 64, rope_base: float = 10000.0, rope_2d: bool = False,
    ):
        super().__init__(dim, degree, expand, n_groups, n_sel_heads, bias)
        self.rope_2d, self.max_seq_len, self.max_h, self.max_w, self.rope_base = rope_2d, max_seq_len, max_h, max_w, rope_base
        rope_dim = self._po_dim
        multiple = 4 if rope_2d else 2
        _require(rope_dim % multiple == 0,
                 f"dim * expand ({rope_dim}) must be divisible by {multiple} for {'2' if rope_2d else '1'}-D RoPE")
        if n_sel_heads > 1:
            _require(n_sel_heads % multiple == 0,
                     f"n_sel_heads ({n_sel_heads}) must be divisible by {multiple} for {'2' if rope_2d else '1'}-D RoPE")
            _require(self.head_dim >= multiple, f"head_dim ({self.head_dim}) must be >= {multiple} for RoPE with n_sel_heads > 1")
        if rope_2d:
            for name, table in zip(("row_cos", "row_sin", "col_cos", "col_sin"), precompute_freqs_2d(rope_dim, max_h, max_w, rope_base)):
                self.register_buffer(name, table)
        else:
            freqs_cos, freqs_sin = precompute_freqs_1d(rope_dim, max_seq_len, rope_base)
            self.register_buffer("freqs_cos", freqs_cos)
            self.register_buffer("freqs_sin", freqs_sin)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(), "max_seq_len": self.max_seq_len, "max_h": self.max_h,
            "max_w": self.max_w, "rope_base": self.rope_base, "rope_2d": self.rope_2d,
        }

    def _tables(self, channels: int):
        """Frequency tables for x of ``channels`` channels.

        The selection signal of a multi-head layer has one channel per head: it takes the
        leading frequency of each head, as upstream does.
        """
        names = ("row_cos", "row_sin", "col_cos", "col_sin") if self.rope_2d else ("freqs_cos", "freqs_sin")
        tables = [getattr(self, n) for n in names]
        if channels == self._po_dim:
            return tables
        stride = self.head_dim if self.rope_2d else self.head_dim // 2
        width = channels // 4 if self.rope_2d else channels // 2
        return [t[:, ::stride][:, :width] for t in tables]

    def _rotation(self, channels: int, positions, positions_hw, tokens: int, device) -> P.Rotation:
        """The tables of ``tokens`` tokens at their positions, gathered for x of ``channels``
        channels: (B or 1, tokens, channels/2), 2-D as the row angles then the column angles."""
        tables = self._tables(channels)
        if self.rope_2d:
            if positions_hw is None:
                raise ArchitectureError("positions_hw (N, 2) must be given to a 2-D RoPE layer")
            row_cos, row_sin, col_cos, col_sin = tables
            rows, cols = positions_hw[..., 0], positions_hw[..., 1]
            cos, sin = torch.cat([row_cos[rows], col_cos[cols]], dim=-1), torch.cat([row_sin[rows], col_sin[cols]], dim=-1)
        else:
            if positions is None:
                positions = torch.arange(tokens, device=device)
            cos, sin = tables[0][positions], tables[1][positions]
        return P.Rotation("2d" if self.rope_2d else "1d", *(t if t.dim() == 3 else t.unsqueeze(0) for t in (cos, sin)))

    def _rope(self, x: torch.Tensor, positions, positions_hw) -> torch.Tensor:
        return P.rotate(x, self._rotation(x.shape[-1], positions, positions_hw, x.shape[1], x.device))

    def _rotated_aggregate(self, h: torch.Tensor, mask, positions, positions_hw) -> torch.Tensor:
        """Features of the context h rotated at its positions, aggregated: one PolyAggregate with
        its cos/sin inputs when exporting with fused ops."""
        rotation = self._rotation(h.shape[-1], positions, positions_hw, h.shape[1], h.device)
        rotation = P.Rotation(rotation.kind, rotation.cos.to(h.dtype), rotation.sin.to(h.dtype))
        return P.poly_aggregate(h, self.po_coeff, mask, self.variant, self.order, self._features, rotation, self)

    def forward(
        self, xq: torch.Tensor, xc: torch.Tensor | None = None, mask=None,
        positions: torch.Tensor | None = None, ctx_positions: torch.Tensor | None = None,
        positions_hw: torch.Tensor | None = None, ctx_positions_hw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Positions: (T,) or (B, T) int64 for 1-D, (T, 2) or (B, T, 2) for 2-D.

        Context positions default to the query's for self-mixing, else to 0..N-1 (1-D).
        """
        self_mixing = xc is None or xc is xq
        xc = xq if xc is None else xc
        if ctx_positions is None and self_mixing:
            ctx_positions = positions
        if ctx_positions_hw is None and self_mixing:
            ctx_positions_hw = positions_hw
        if self._stream is not None:
            return self._stream.step(self, xq, xc, mask=mask, positions_hw=positions_hw)
        h, s = self._projections(xq, xc)
        h = self._rotated_aggregate(h, mask, ctx_positions, ctx_positions_hw).to(s.dtype)
        s = self._rope(s, positions, positions_hw)
        return self._output(s, h, P.single_context(mask))

    def _stream_chunk(self, xq, xc, count, mask, positions_hw=None):
        """1-D positions continue from the tokens seen; 2-D ones are given per chunk."""
        h, s = self._projections(xq, xc)
        ctx_positions = query_positions = None
        if not self.rope_2d:
            ctx_positions = count + torch.arange(xc.shape[1], device=xc.device)
            query_positions = count + torch.arange(xq.shape[1], device=xq.device)
        return self._rotated_aggregate(h, mask, ctx_positions, positions_hw), self._rope(s, query_positions, positions_hw)
