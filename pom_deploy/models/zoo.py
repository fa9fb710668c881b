"""A residual PoM block and the small model zoo used by tests, examples and the demo.

* ``BlockCausalVideoPoM``: tokens of video frames, each frame sees itself and the past
  (the seed README's frame loop), so it streams frame by frame with a constant state.
* ``ClassConditionalDiTPoM``: a DiT-style denoiser: patchify, timestep and class
  conditioning (adaLN), PoM blocks with 2-D RoPE, unpatchify.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..errors import ArchitectureError
from .functional import BlockCausalMask
from .layers import PoMv2
from .rope import PoMv2RoPE


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class PoMBlock(nn.Module):
    """x + mixer(norm(x)), then x + ffn(norm(x)): the seed README's block, pre-norm."""

    def __init__(self, mixer: nn.Module, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), mask=mask)
        return x + self.ffn(self.norm2(x))


class BlockCausalVideoPoM(nn.Module):
    """Video tokens (B, frames * frame_tokens, in_dim) -> same shape, block-causal over frames."""

    def __init__(self, in_dim: int = 16, dim: int = 32, depth: int = 2, degree: int = 2, expand: int = 2,
                 n_sel_heads: int = 4, frame_tokens: int = 8, mlp_ratio: float = 2.0):
        super().__init__()
        if frame_tokens < 1:
            raise ArchitectureError(f"frame_tokens must be >= 1, got {frame_tokens}")
        self.arch = dict(in_dim=in_dim, dim=dim, depth=depth, degree=degree, expand=expand,
                         n_sel_heads=n_sel_heads, frame_tokens=frame_tokens, mlp_ratio=mlp_ratio)
        self.frame_tokens = frame_tokens
        self.in_proj = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(
            PoMBlock(PoMv2(dim, degree, expand, 1, n_sel_heads), dim, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, in_dim)

    def config(self) -> dict[str, Any]:
        return dict(self.arch)

    def forward(self, tokens: torch.Tensor, mask=None) -> torch.Tensor:
        """``mask`` defaults to block-causal over frames of ``frame_tokens`` tokens."""
        mask = BlockCausalMask(self.frame_tokens) if mask is None else mask
        x = self.in_proj(tokens)
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.out_proj(self.norm(x))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AdaLNPoMBlock(nn.Module):
    """DiT block: conditioning gives shift, scale and gate of both residual branches."""

    def __init__(self, mixer: nn.Module, dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ffn = FeedForward(dim, mlp_ratio)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, positions_hw: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.mixer(h, positions_hw=positions_hw)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.ffn(h)


class ClassConditionalDiTPoM(nn.Module):
    """(image (B, C, H, W), timestep (B,), class label (B,)) -> predicted noise (B, C, H, W)."""

    def __init__(self, in_channels: int = 4, patch: int = 2, dim: int = 32, depth: int = 2, degree: int = 2,
                 expand: int = 2, n_sel_heads: int = 4, num_classes: int = 10, max_grid: int = 32, mlp_ratio: float = 2.0):
        super().__init__()
        self.arch = dict(in_channels=in_channels, patch=patch, dim=dim, depth=depth, degree=degree, expand=expand,
                         n_sel_heads=n_sel_heads, num_classes=num_classes, max_grid=max_grid, mlp_ratio=mlp_ratio)
        self.in_channels, self.patch, self.dim = in_channels, patch, dim
        self.patchify = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embedding = nn.Embedding(num_classes, dim)
        self.blocks = nn.ModuleList(
            AdaLNPoMBlock(PoMv2RoPE(dim, degree, expand, 1, n_sel_heads, max_h=max_grid, max_w=max_grid, rope_2d=True),
                          dim, mlp_ratio)
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.unpatchify = nn.Linear(dim, patch * patch * in_channels)

    def config(self) -> dict[str, Any]:
        return dict(self.arch)

    def forward(self, image: torch.Tensor, timestep: torch.Tensor, class_label: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = image.shape
        rows, cols = height // self.patch, width // self.patch
        x = self.patchify(image).flatten(2).transpose(1, 2)  # (B, rows * cols, dim)
        grid = torch.stack(torch.meshgrid(
            torch.arange(rows, device=image.device), torch.arange(cols, device=image.device), indexing="ij"), dim=-1)
        positions_hw = grid.reshape(-1, 2)
        cond = self.time_mlp(timestep_embedding(timestep, self.dim).to(image.dtype)) + self.class_embedding(class_label)
        for block in self.blocks:
            x = block(x, cond, positions_hw)
        shift, scale = self.final_modulation(cond).unsqueeze(1).chunk(2, dim=-1)
        x = self.unpatchify(self.final_norm(x) * (1 + scale) + shift)  # (B, rows * cols, p * p * C)
        x = x.reshape(batch, rows, cols, self.patch, self.patch, self.in_channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, self.in_channels, rows * self.patch, cols * self.patch)


ZOO = {
    "video_pom": BlockCausalVideoPoM,
    "dit_pom": ClassConditionalDiTPoM,
}


def create_zoo_model(name: str, seed: int | None = 0, **overrides) -> nn.Module:
    """A zoo model with its tiny default config; ``seed`` makes the weights reproducible."""
    if name not in ZOO:
        raise ArchitectureError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    if seed is not None:
        torch.manual_seed(seed)
    model = ZOO[name](**overrides)
    _spread_polynomial_coefficients(model)
    return model.eval()


def _spread_polynomial_coefficients(model: nn.Module) -> None:
    """Upstream initialises po_coeff within +-1e-3 (near-zero outputs): untrained examples
    use larger coefficients so that tests and the demo exercise the polynomial."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PoMv2):
                module.po_coeff.uniform_(-0.5, 0.5)
