"""The export configs pom-deploy ships: one per zoo architecture (registered by decorator),
bare PoM layers (with a mask kind and cross-mixing); and ``resolve``, which picks among them,
a program's own (``programs``) and the one read from any other model (``input_reading``)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..errors import ExportError
from ..models import PoMLayer, PoMv2RoPE
from ..models.zoo import BlockCausalVideoPoM, ClassConditionalDiTPoM
from .config import (
    BATCH, MASK_KINDS, TOKENS, DimSpec, ExportConfig, InputSpec, config_from_file, register_export_config, registered_config,
)
from .input_reading import InputChoices, read_inputs
from .programs import program_config


class LayerCall(nn.Module):
    """A bare PoM layer with a fixed way of calling it (mask kind, cross-mixing, RoPE)."""

    def __init__(self, layer: PoMLayer, mask: str, cross: bool):
        super().__init__()
        self.layer, self.mask, self.cross = layer, mask, cross

    def forward(self, xq, *rest):
        rest = list(rest)
        xc = rest.pop(0) if self.cross else None
        mask = rest.pop(0) if self.mask in ("padding", "full") else {"none": None, "causal": "causal"}[self.mask]
        if isinstance(self.layer, PoMv2RoPE) and rest:  # (a 1-D step graph has no positions: they follow the count)
            key = "positions_hw" if self.layer.rope_2d else "positions"
            return self.layer(xq, xc, mask=mask, **{key: rest.pop(0)})
        return self.layer(xq, xc, mask=mask)


def layer_config(layer: PoMLayer, mask: str = "none", cross: bool = False) -> tuple[ExportConfig, nn.Module]:
    """Config and callable module for a bare layer: xq (batch, tokens, dim) -> y."""
    if mask not in MASK_KINDS:
        raise ExportError(f"unknown mask kind {mask!r}; expected one of {', '.join(MASK_KINDS)}")
    ctx = "context_tokens" if cross else "tokens"
    dims = {"batch": BATCH, "tokens": TOKENS}
    inputs = [InputSpec("xq", ("batch", "tokens", layer.dim))]
    if cross:
        dims[ctx] = DimSpec(1, 48, 16384)
        inputs.append(InputSpec("xc", ("batch", ctx, layer.dim)))
    if mask == "padding":
        inputs.append(InputSpec("mask", ("batch", ctx), kind="mask"))
    elif mask == "full":
        inputs.append(InputSpec("mask", ("batch", "tokens", ctx), kind="mask"))
    elif mask == "causal" and cross:
        raise ExportError("a causal mask needs self-mixing (no --cross)")
    if isinstance(layer, PoMv2RoPE):
        if cross:
            raise ExportError("cross-mixing export of RoPE layers is not supported: context positions would be a second input")
        if layer.rope_2d:
            limit = min(layer.max_h, layer.max_w)
            inputs.append(InputSpec("positions_hw", ("tokens", 2), kind="positions", high=limit))
        else:
            inputs.append(InputSpec("positions", ("tokens",), kind="positions", high=layer.max_seq_len))
            dims["tokens"] = DimSpec(1, min(64, layer.max_seq_len), layer.max_seq_len)
    rope_1d = isinstance(layer, PoMv2RoPE) and not layer.rope_2d
    config = ExportConfig(
        name=f"{type(layer).__name__}[mask={mask}{',cross' if cross else ''}]", inputs=inputs, outputs=["y"], dims=dims,
        stream_dim=None if cross or mask not in ("none", "causal") else "tokens",
        verify_sizes=[{"batch": 3, "tokens": 37, ctx: 29}, {"batch": 1, "tokens": 1, ctx: 5}],
        step_omits=("positions",) if rope_1d else (),
    )
    return config, LayerCall(layer, mask, cross)


@register_export_config(BlockCausalVideoPoM)
def video_config(model: BlockCausalVideoPoM) -> ExportConfig:
    frames = DimSpec(1, 4, 512, multiple_of=model.frame_tokens)
    in_dim = model.in_proj.in_features
    return ExportConfig(
        name="video_pom", inputs=[InputSpec("tokens", ("batch", "tokens", in_dim))], outputs=["output"],
        dims={"batch": BATCH, "tokens": frames}, stream_dim="tokens",
        verify_sizes=[{"batch": 3, "tokens": 5 * model.frame_tokens}, {"batch": 1, "tokens": model.frame_tokens}],
    )


@register_export_config(ClassConditionalDiTPoM)
def dit_config(model: ClassConditionalDiTPoM) -> ExportConfig:
    grid = model.arch["max_grid"]
    side = DimSpec(1, min(8, grid), grid, multiple_of=model.patch)
    num_classes = model.class_embedding.num_embeddings
    return ExportConfig(
        name="dit_pom",
        inputs=[
            InputSpec("image", ("batch", model.in_channels, "height", "width")),
            InputSpec("timestep", ("batch",), kind="uniform", high=1000),
            InputSpec("class_label", ("batch",), dtype="int64", kind="index", high=num_classes),
        ],
        outputs=["noise"], dims={"batch": BATCH, "height": side, "width": side},
        verify_sizes=[{"batch": 3, "height": 6 * model.patch, "width": 4 * model.patch},
                      {"batch": 1, "height": model.patch, "width": 3 * model.patch}],
    )


def resolve(model: nn.Module, config: ExportConfig | str | Path | None = None, mask: str = "none",
            cross: bool = False, choices: InputChoices | None = None) -> tuple[ExportConfig, nn.Module]:
    """The config for ``model`` and the module to export (a bare layer gets a call wrapper).
    A config (file) wins over everything; then a program's own inputs, a bare layer's, a
    registered config, and last the inputs read from the model (``input_reading``)."""
    choices = choices if choices is not None else InputChoices()
    if isinstance(config, (str, Path)):
        config = config_from_file(config)
    if config is not None:
        return config, model
    bare = "--mask and --cross apply to a bare PoM layer; {} calls its layers itself"
    program = getattr(model, "exported_program", None)
    if program is not None:
        if mask != "none" or cross:
            raise ExportError(bare.format("a torch.export program"))
        if choices.declared or choices.examples:
            raise ExportError("--input cannot change a torch.export program's inputs (its trace fixed them); --input-range can")
        return program_config(program, choices.ranges), model
    if isinstance(model, PoMLayer):
        if choices:
            raise ExportError("--input and --input-range apply to models without an export config; a bare PoM layer has one")
        return layer_config(model, mask, cross)
    if mask != "none" or cross:
        raise ExportError(bare.format("a model"))
    registered = registered_config(model)
    if registered is not None:
        if choices:
            raise ExportError(f"{type(model).__name__} has a built-in export config; --input and --input-range apply to "
                              "models without one (give --config to change it)")
        return registered, model
    if any(isinstance(m, PoMLayer) for m in model.modules()):
        return read_inputs(model, choices.declared, choices.ranges, choices.examples), model
    raise ExportError(f"unsupported model {type(model).__name__}: it has no PoM layer and no export config was given")
