"""Per-architecture export configs, in the manner of Optimum's ONNX configs.

A config names the graph inputs with their symbolic dims and dtypes, the outputs, the
range of every dim (the default TensorRT profile), how to make dummy inputs, and how to
call the model with them. Configs exist for every zoo model and for bare PoM layers; users
describe their own models with ``ExportConfig`` in Python or a small JSON/YAML file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import ExportError
from ..models import PoMLayer, PoMv2RoPE
from ..models.zoo import BlockCausalVideoPoM, ClassConditionalDiTPoM

MASK_KINDS = ("none", "causal", "padding", "full")


@dataclass(frozen=True)
class DimSpec:
    """A symbolic dim: ``multiple_of * n`` for n in [min, max], ``opt`` the typical value."""

    min: int
    opt: int
    max: int
    multiple_of: int = 1

    def sizes(self) -> tuple[int, int, int]:
        return self.min * self.multiple_of, self.opt * self.multiple_of, self.max * self.multiple_of


@dataclass(frozen=True)
class InputSpec:
    """A graph input. ``dims`` mixes ints and names of ``ExportConfig.dims``.

    ``kind`` says how dummy values are drawn: ``float`` (normal), ``index`` (ints in
    [0, high)), ``timestep`` (uniform in [0, high)), ``mask`` (0/1, no all-zero row),
    ``positions`` (ints in [0, high)).
    """

    name: str
    dims: tuple[int | str, ...]
    dtype: str = "float"  # "float" follows the export dtype; or a torch dtype name
    kind: str = "float"
    high: int = 1000


@dataclass
class ExportConfig:
    name: str
    inputs: list[InputSpec]
    outputs: list[str]
    dims: dict[str, DimSpec]
    call: Callable[..., Any] | None = None  # (model, **inputs) -> output(s); default model(*inputs)
    stream_dim: str | None = None  # the dim that chunks split in step graphs ("tokens")
    verify_sizes: list[dict[str, int]] = field(default_factory=list)  # dim values besides opt
    dim_aliases: dict[str, str] = field(default_factory=dict)  # exporter's dim name -> the name users see

    def dim_values(self, which: str = "opt") -> dict[str, int]:
        index = {"min": 0, "opt": 1, "max": 2}[which]
        return {name: spec.sizes()[index] for name, spec in self.dims.items()}

    def shape(self, spec: InputSpec, values: dict[str, int]) -> list[int]:
        return [d if isinstance(d, int) else values[d] for d in spec.dims]

    def dummy_inputs(self, values: dict[str, int] | None = None, dtype: torch.dtype = torch.float32,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        values = {**self.dim_values(), **(values or {})}
        return {spec.name: _draw(spec, self.shape(spec, values), dtype, generator) for spec in self.inputs}

    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor]):
        if self.call is not None:
            return self.call(model, **inputs)
        return model(*inputs.values())

    def torch_dim(self, name: str):
        spec = self.dims[name]
        base = torch.export.Dim(name if spec.multiple_of == 1 else f"{name}_blocks", min=spec.min, max=spec.max)
        return base if spec.multiple_of == 1 else spec.multiple_of * base

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        cache: dict[str, Any] = {}
        shapes = {}
        for spec in self.inputs:
            axes = {}
            for axis, d in enumerate(spec.dims):
                if isinstance(d, str):
                    axes[axis] = cache.setdefault(d, self.torch_dim(d))
            shapes[spec.name] = axes
        return shapes


def _draw(spec: InputSpec, shape: list[int], dtype: torch.dtype, generator) -> torch.Tensor:
    if spec.kind in ("index", "positions"):
        return torch.randint(0, spec.high, shape, generator=generator, dtype=torch.int64)
    if spec.kind == "mask":
        mask = (torch.rand(shape, generator=generator) < 0.7).to(dtype)
        mask[..., 0] = 1  # no row fully masked
        return mask
    value = torch.rand(shape, generator=generator) * spec.high if spec.kind == "timestep" else torch.randn(shape, generator=generator)
    return value.to(dtype if spec.dtype == "float" else getattr(torch, spec.dtype))


BATCH = DimSpec(1, 2, 64)
TOKENS = DimSpec(1, 64, 16384)


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
    config = ExportConfig(
        name=f"{type(layer).__name__}[mask={mask}{',cross' if cross else ''}]", inputs=inputs, outputs=["y"], dims=dims,
        stream_dim=None if cross or mask != "none" else "tokens",
        verify_sizes=[{"batch": 3, "tokens": 37, ctx: 29}, {"batch": 1, "tokens": 1, ctx: 5}],
    )
    return config, LayerCall(layer, mask, cross)


def video_config(model: BlockCausalVideoPoM) -> ExportConfig:
    frames = DimSpec(1, 4, 512, multiple_of=model.frame_tokens)
    in_dim = model.in_proj.in_features
    return ExportConfig(
        name="video_pom", inputs=[InputSpec("tokens", ("batch", "tokens", in_dim))], outputs=["output"],
        dims={"batch": BATCH, "tokens": frames}, stream_dim="tokens",
        verify_sizes=[{"batch": 3, "tokens": 5 * model.frame_tokens}, {"batch": 1, "tokens": model.frame_tokens}],
    )


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
        verify_sizes=[{"batch": 3, "height": 6 * model.patch, "width": 4 * model.patch}, {"batch": 1, "height": model.patch, "width": 3 * model.patch}],
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


def config_from_file(path: str | Path) -> ExportConfig:
    """A user config: {"inputs": [{"name", "shape", "dtype"?, "kind"?, "high"?}], "outputs": [...],
    "dims": {name: {"min", "opt", "max", "multiple_of"?}}, "stream_dim"?}."""
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        dims = {name: DimSpec(**spec) for name, spec in data["dims"].items()}
        inputs = [InputSpec(i["name"], tuple(i["shape"]), i.get("dtype", "float"), i.get("kind", "float"), i.get("high", 1000))
                  for i in data["inputs"]]
        config = ExportConfig(name=data.get("name", path.stem), inputs=inputs, outputs=list(data["outputs"]), dims=dims,
                              stream_dim=data.get("stream_dim"))
    except OSError as exc:
        raise ExportError(f"cannot read export config {path}: {exc.strerror}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportError(f"export config {path} is invalid: {type(exc).__name__}: {exc}") from None
    for spec in config.inputs:
        unknown = [d for d in spec.dims if isinstance(d, str) and d not in config.dims]
        if unknown:
            raise ExportError(f"export config {path}: input {spec.name!r} uses undefined dim {unknown[0]!r}")
    return config


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
    if isinstance(model, BlockCausalVideoPoM):
        return video_config(model), model
    if isinstance(model, ClassConditionalDiTPoM):
        return dit_config(model), model
    if any(isinstance(m, PoMLayer) for m in model.modules()):
        return generic_config(model), model
    raise ExportError(f"unsupported model {type(model).__name__}: it has no PoM layer and no export config was given")
