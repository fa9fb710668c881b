"""Run any model's PoM layers as streaming steps with explicit state.

``stream_layers`` makes every PoM layer's ``forward`` perform one streaming step from a given
state, with the mask the model passes (``PoMLayer.state_forward``), and record the new state
and that mask, whatever the surrounding model does. That is how a
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
    mask: object = None  # the mask the model passed in this step

    def step(self, layer: PoMLayer, xq, xc=None, mask=None, **positions):
        if self.calls:
            raise RuntimeError("a PoM layer was called twice in one streaming step; step export needs one call per layer")
        self.calls += 1
        self.mask = mask
        y, self.new_state = layer.state_forward(xq, xc, self.state, mask, **positions)
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


def within_chunk(mask) -> str:
    """How a layer streamed with ``mask`` mixes the tokens of one chunk (recorded in metadata):
    ``token-causal``, ``frame-causal`` (whole frames) or ``whole-chunk`` (one block, no mask)."""
    if mask is None:
        return "whole-chunk"
    return "frame-causal" if isinstance(mask, P.BlockCausalMask) else "token-causal"


class _MaskProbe:
    """Stands in for a layer's step: records the mask the model passes, computes nothing."""

    def __init__(self):
        self.masks: list = []

    def step(self, layer, xq, xc=None, mask=None, **positions):
        self.masks.append(mask)
        return torch.zeros_like(xq)


def layer_masks(layers: list[PoMLayer], run) -> list[list]:
    """The masks the model passes each layer while ``run()`` calls the model, one list per layer.
    The layers compute nothing meanwhile, so the masks are read at any length (a block-causal
    mask's frame size before a valid length is known)."""
    probes = [_MaskProbe() for _ in layers]
    for layer, probe in zip(layers, probes):
        layer._stream = probe
    try:
        with torch.no_grad():
            run()
    finally:
        for layer in layers:
            layer._stream = None
    return [probe.masks for probe in probes]
