"""What a model's own masks say about the lengths it takes: a block-causal mask of frames of F
tokens needs sequences (and stream chunks) of whole frames. Read by running the model once with
its PoM layers only recording the masks they get (``streaming.layer_masks``), so that any length
works before the valid ones are known."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn

from ..errors import ExportError, PomDeployError
from ..models import functional as P
from ..streaming import find_pom_layers, layer_masks
from .config import DimSpec, ExportConfig


def probe_masks(model: nn.Module, config: ExportConfig, dtype: torch.dtype = torch.float32) -> list[list]:
    """The masks ``model``'s forward passes each of its PoM layers (module order), one list per layer."""
    layers = [layer for _, layer in find_pom_layers(model)]
    if not layers:
        return []
    inputs = config.dummy_inputs(dtype=dtype, generator=torch.Generator().manual_seed(0))
    try:
        return layer_masks(layers, lambda: config.run(model, inputs))
    except PomDeployError:
        raise
    except Exception as exc:
        raise config.forward_failure(inputs, exc) from None


def frame_multiple(masks: list[list]) -> int:
    """The least length of whole frames for every block-causal mask among ``masks`` (1: none)."""
    sizes = [m.frame_tokens for seen in masks for m in seen if isinstance(m, P.BlockCausalMask)]
    return math.lcm(*sizes) if sizes else 1


def fit_frames(config: ExportConfig, model: nn.Module) -> ExportConfig:
    """``config`` with its token dim (``stream_dim``) a multiple of the frame size of the model's
    block-causal masks, verification lengths rounded up to whole frames; unchanged otherwise."""
    if config.stream_dim is None or getattr(model, "exported_program", None) is not None:
        return config
    frames = frame_multiple(probe_masks(model, config))
    dim = config.dims[config.stream_dim]
    if dim.multiple_of % frames == 0:
        return config
    multiple = math.lcm(dim.multiple_of, frames)
    low, opt, high = dim.sizes()
    if high < multiple:
        raise ExportError(f"{config.name}: the model's block-causal mask needs {config.stream_dim} in whole frames of "
                          f"{frames} tokens, more than the config's maximum of {high}")
    units = (max(1, math.ceil(low / multiple)), 0, high // multiple)
    fitted = DimSpec(units[0], min(units[2], max(units[0], round(opt / multiple))), units[2], multiple)
    whole = lambda size: max(multiple, math.ceil(size / multiple) * multiple)
    sizes = [{k: whole(v) if k == config.stream_dim else v for k, v in s.items()} for s in config.verify_sizes]
    return replace(config, dims={**config.dims, config.stream_dim: fitted}, verify_sizes=sizes)
