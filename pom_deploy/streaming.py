"""Run any model's PoM layers as streaming steps with explicit state.

``stream_layers`` makes every PoM layer's ``forward`` perform one block-causal step from
a given state and record the new one, whatever the surrounding model does. That is how a
step graph is exported from an ordinary model's forward, and how the same model is
stepped in eager PyTorch for verification.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .models import PoMLayer
from .models import functional as P


def find_pom_layers(model: nn.Module) -> list[tuple[str, PoMLayer]]:
    """PoM layers in module order, with their paths (``""`` for a bare layer)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PoMLayer)]


@dataclass
class LayerStream:
    state: dict[str, torch.Tensor]
    new_state: dict[str, torch.Tensor] | None = None
    calls: int = field(default=0)

    def step(self, layer: PoMLayer, xq, xc=None, **positions):
        if self.calls:
            raise RuntimeError("a PoM layer was called twice in one streaming step; step export needs one call per layer")
        self.calls += 1
        y, self.new_state = layer.state_forward(xq, xc, self.state, **positions)
        return y


@contextlib.contextmanager
def stream_layers(layers: list[PoMLayer], states: list[dict[str, torch.Tensor]]):
    """Within the block, ``layer(x, ...)`` is ``layer.state_forward(x, state=...)``."""
    streams = [LayerStream(state) for state in states]
    for layer, stream in zip(layers, streams):
        layer._stream = stream
    try:
        yield streams
    finally:
        for layer in layers:
            layer._stream = None


def initial_states(layers: list[PoMLayer], batch: int) -> list[dict[str, torch.Tensor]]:
    return [P.initial_state(batch, layer.state_channels) for layer in layers]
