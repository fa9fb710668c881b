"""What full graphs are verified on: inputs drawn by kind, as users will feed them.

Unit-normal data alone never reaches what breaks a graph in practice: float16 powers of an
outlier token, junk in padded-out tokens (a masked sum of an overflowed term is NaN), rows with
nothing to attend to, the ends of every dynamic range and of every index range. Besides the
typical inputs at the config's sizes, each full graph is verified on *edge inputs*
(``draw_input(..., edge=True)``) at the typical sizes, with every dim at its minimum, and with
each dim at its maximum in turn:

- float inputs: N(0, 1) with one token (a (B, N, C) input's token 0, a (B, C, H, W) input's
  pixel (0, 0)) scaled by ``OUTLIER_SCALE``;
- masks: 0/1, the last quarter of the tokens padded out, the last batch row all masked; every
  float input laid out (batch, tokens, ...) over the mask's tokens holds junk of scale
  ``JUNK_SCALE`` where the mask leaves a token out;
- indices and positions: valid ids in [0, high), with 0 and high - 1 present; timesteps in
  [0, high] with both ends present.

Sizes whose inputs would exceed ``MAX_ELEMENTS`` elements (a (B, N, N) mask at 16,384 tokens)
are not run; the report says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ExportConfig, InputSpec, _draw

OUTLIER_SCALE = 40.0  # one token x40: its degree-4 v1 features overflow float16 among 4,096 tokens (issue 21)
JUNK_SCALE = 300.0  # padded-out junk: float16 squares of its features overflow (issue 21)
MAX_ELEMENTS = 1 << 24  # inputs of one verification case: 64 MiB in float32
EDGE = "edge inputs"


def draw_input(kind: str, shape: list[int], dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None,
               high: int = 1000, edge: bool = False, low: float = 0) -> torch.Tensor:
    """Values for one input of ``kind`` (``InputSpec.kind``: float, index, positions, uniform
    (timestep), mask): typical ones, or with ``edge`` the edge inputs above (a float input's
    outlier; a mask's padding and all-masked row; the ends of an index or uniform range [low, high)).
    Floats in ``dtype``, indices and positions int64."""
    spec = InputSpec("input", tuple(shape), "float", kind, high, low)
    value = _draw(spec, shape, dtype, generator)
    if not edge or value.numel() == 0:
        return value
    if kind in ("index", "positions", "uniform", "timestep"):
        flat = value.view(-1)
        flat[0], flat[-1] = low, (high - 1 if kind in ("index", "positions") else high)
    elif kind == "mask":
        value[..., 0] = 1
        tokens = value.shape[-1]
        if tokens >= 2:
            value[..., tokens - max(1, tokens // 4):] = 0
        value[-1] = 0
    elif value.dim() == 3:
        value[:, 0] *= OUTLIER_SCALE
    elif value.dim() == 4:
        value[:, :, 0, 0] *= OUTLIER_SCALE
    return value


@dataclass(frozen=True)
class VerificationCase:
    sizes: dict[str, int]
    edge: bool

    def label(self, config: ExportConfig) -> str:
        sizes = " ".join(f"{k}={v}" for k, v in self.sizes.items() if k in config.dims)
        return f"{sizes} {EDGE}" if self.edge else sizes

    def elements(self, config: ExportConfig) -> int:
        values = {**config.dim_values(), **self.sizes}
        return sum(math.prod(config.shape(spec, values)) for spec in config.inputs)

    def inputs(self, config: ExportConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """float32 inputs of the case (typical ones as ``config.dummy_inputs`` draws them)."""
        if not self.edge:
            return config.dummy_inputs(self.sizes, dtype=torch.float32, generator=generator)
        values = {**config.dim_values(), **self.sizes}
        inputs = {spec.name: _typed(spec, draw_input(spec.kind, config.shape(spec, values), torch.float32, generator,
                                                     spec.high, edge=True, low=spec.low))
                  for spec in config.inputs}
        _fill_padding_with_junk(config, inputs, generator)
        return inputs


def verification_cases(config: ExportConfig) -> list[VerificationCase]:
    """Typical inputs at the opt sizes and the config's other sizes (as before edge inputs
    existed), then edge inputs at the opt sizes, every dim at its minimum, and each dim at its
    maximum with the others at their minimum."""
    low, high = config.dim_values("min"), config.dim_values("max")
    typical = [VerificationCase(config.dim_values(), False)] + [VerificationCase(s, False) for s in config.verify_sizes]
    ends = [low] + [{**low, name: high[name]} for name in config.dims if high[name] != low[name]]
    return typical + [VerificationCase(config.dim_values(), True)] + [VerificationCase(s, True) for s in ends]


def _typed(spec: InputSpec, value: torch.Tensor) -> torch.Tensor:
    """A float input of a fixed dtype (``InputSpec.dtype`` other than "float") in that dtype."""
    return value.to(getattr(torch, spec.dtype)) if value.is_floating_point() and spec.dtype != "float" else value


def _fill_padding_with_junk(config: ExportConfig, inputs: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Float inputs laid out (batch, tokens, ...) over a mask's (batch, ..., tokens) get junk of
    scale JUNK_SCALE at the tokens that the mask leaves out in every row."""
    for mask_spec in (s for s in config.inputs if s.kind == "mask" and len(s.dims) >= 2):
        mask = inputs[mask_spec.name]
        padded = (mask == 0).flatten(1, -2).all(dim=1) if mask.dim() > 2 else mask == 0  # (batch, tokens)
        for spec in config.inputs:
            value = inputs[spec.name]
            if spec.kind != "float" or len(spec.dims) < 3 or spec.dims[:2] != (mask_spec.dims[0], mask_spec.dims[-1]):
                continue
            junk = torch.randn(value.shape, generator=generator).to(value.dtype) * JUNK_SCALE
            value[padded] = junk[padded]
