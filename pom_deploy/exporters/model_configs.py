"""The export configs pom-deploy ships: one per zoo architecture (registered by decorator),
bare PoM layers (with a mask kind and cross-mixing), a generic one for any model holding PoM
layers, one read off a ``torch.export`` program; and ``resolve``, which picks among them."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ExportError
from ..models import PoMLayer, PoMv2RoPE
from ..models.zoo import BlockCausalVideoPoM, ClassConditionalDiTPoM
from .config import (
    BATCH, MASK_KINDS, TOKENS, DimSpec, ExportConfig, InputSpec, config_from_file, register_export_config, registered_config,
)


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
        stream_dim=None if cross or mask != "none" else "tokens",
        verify_sizes=[{"batch": 3, "tokens": 37, ctx: 29}, {"batch": 1, "tokens": 1, ctx: 5}],
        masked_call=_layer_with_mask, step_omits=("positions",) if rope_1d else (),
    )
    return config, LayerCall(layer, mask, cross)


def _layer_with_mask(call: LayerCall, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The bare layer under ``mask``; streamed 1-D positions are 0..N-1, 2-D ones are inputs."""
    layer, positions = call.layer, {}
    if isinstance(layer, PoMv2RoPE):
        positions = {"positions_hw": inputs["positions_hw"]} if layer.rope_2d else {"positions": torch.arange(inputs["xq"].shape[1])}
    return layer(inputs["xq"], mask=mask, **positions)


@register_export_config(BlockCausalVideoPoM)
def video_config(model: BlockCausalVideoPoM) -> ExportConfig:
    frames = DimSpec(1, 4, 512, multiple_of=model.frame_tokens)
    in_dim = model.in_proj.in_features
    return ExportConfig(
        name="video_pom", inputs=[InputSpec("tokens", ("batch", "tokens", in_dim))], outputs=["output"],
        dims={"batch": BATCH, "tokens": frames}, stream_dim="tokens",
        verify_sizes=[{"batch": 3, "tokens": 5 * model.frame_tokens}, {"batch": 1, "tokens": model.frame_tokens}],
        masked_call=lambda video, inputs, mask: video(inputs["tokens"], mask=mask),
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
            InputSpec("timestep", ("batch",), kind="timestep", high=1000),
            InputSpec("class_label", ("batch",), dtype="int64", kind="index", high=num_classes),
        ],
        outputs=["noise"], dims={"batch": BATCH, "height": side, "width": side},
        verify_sizes=[{"batch": 3, "height": 6 * model.patch, "width": 4 * model.patch},
                      {"batch": 1, "height": model.patch, "width": 3 * model.patch}],
    )


def generic_config(model: nn.Module) -> ExportConfig:
    """For a model that holds PoM layers but has no config: one input (batch, tokens, width),
    the width read from the first layer that consumes the input."""
    width = _input_width(model)
    return ExportConfig(
        name=type(model).__name__, inputs=[InputSpec("x", ("batch", "tokens", width))], outputs=["output"],
        dims={"batch": BATCH, "tokens": TOKENS}, stream_dim="tokens",
        verify_sizes=[{"batch": 3, "tokens": 37}],
    )


def _input_width(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
        if isinstance(module, nn.LayerNorm):
            return module.normalized_shape[-1]
        if isinstance(module, PoMLayer):
            return module.dim
    raise ExportError(f"cannot tell the input width of {type(model).__name__}: give an export config")


def exported_program_config(program: "torch.export.ExportedProgram") -> ExportConfig:
    """A config read off a ``torch.export`` program: its user inputs, example shapes and the
    ranges of its symbolic dims (axis 0 is called ``batch``, axis 1 ``tokens``)."""
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    names: dict[str, str] = {}
    dims: dict[str, DimSpec] = {}
    inputs = []
    for node in placeholders:
        value = node.meta["val"]
        shape: list[int | str] = []
        for axis, size in enumerate(value.shape):
            if isinstance(size, int):
                shape.append(size)
                continue
            symbol = str(size.node.expr)
            if symbol not in names:
                name = {0: "batch", 1: "tokens"}.get(axis, f"{node.name}_{axis}")
                names[symbol] = name if name not in dims else f"{node.name}_{axis}"
                bounds = next((r for k, r in program.range_constraints.items() if str(k) == symbol), None)
                low = max(1, int(bounds.lower)) if bounds is not None else 1
                high = 16384 if bounds is None or "oo" in str(bounds.upper) else int(bounds.upper)
                hint = size.node.hint or max(low, 2)
                cap = BATCH.max if names[symbol] == "batch" else TOKENS.max  # a sensible default profile
                dims[names[symbol]] = DimSpec(low, max(low, min(int(hint), high)), max(low, min(high, cap)))
            shape.append(names[symbol])
        kind = "float" if value.dtype.is_floating_point else "index"
        inputs.append(InputSpec(node.name, tuple(shape), "float" if kind == "float" else str(value.dtype).split(".")[-1], kind, high=2))
    outputs = [f"output_{i}" if i else "output" for i in range(len(program.graph_signature.user_outputs))]
    other_sizes = {name: min(spec.max, spec.opt + 3) for name, spec in dims.items()}
    return ExportConfig(name="torch.export program", inputs=inputs, outputs=outputs, dims=dims,
                        verify_sizes=[other_sizes] if dims else [], dim_aliases=names)


def resolve(model: nn.Module, config: ExportConfig | str | Path | None = None, mask: str = "none",
            cross: bool = False) -> tuple[ExportConfig, nn.Module]:
    """The config for ``model`` and the module to export (a bare layer gets a call wrapper)."""
    if isinstance(config, (str, Path)):
        config = config_from_file(config)
    if config is not None:
        return config, model
    program = getattr(model, "exported_program", None)
    if program is not None:
        if mask != "none" or cross:
            raise ExportError("--mask and --cross apply to a bare PoM layer, not to a torch.export program")
        return exported_program_config(program), model
    if isinstance(model, PoMLayer):
        return layer_config(model, mask, cross)
    if mask != "none" or cross:
        raise ExportError("--mask and --cross apply to a bare PoM layer; a model calls its layers itself")
    registered = registered_config(model)
    if registered is not None:
        return registered, model
    if any(isinstance(m, PoMLayer) for m in model.modules()):
        return generic_config(model), model
    raise ExportError(f"unsupported model {type(model).__name__}: it has no PoM layer and no export config was given")
