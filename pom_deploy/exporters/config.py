"""Export configs, in the manner of Optimum's ONNX configs, and their registry.

A config names the graph inputs with their symbolic dims and dtypes, the outputs, the
range of every dim (the default TensorRT profile), how to make dummy inputs, and how to
call the model with them. A model class gets its config from a factory registered with
``@register_export_config(ModelClass)`` (the zoo's are in ``model_configs``); users describe
other models with ``ExportConfig`` in Python or a small JSON/YAML file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import ExportError, first_line

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
    [low, high): token ids, class labels), ``uniform`` (floats in [low, high): timesteps;
    ``timestep`` in older config files), ``mask`` (0/1, no all-zero row), ``positions`` (ints in
    [low, high)). The range of ``index`` and ``positions`` inputs is written into the metadata
    and checked by the runtime.
    """

    name: str
    dims: tuple[int | str, ...]
    dtype: str = "float"  # "float" follows the export dtype; or a torch dtype name
    kind: str = "float"
    high: float | None = 1000
    low: float = 0

    @property
    def integer_range(self) -> list[int] | None:
        """[low, high) of an integer input whose values index something, else None."""
        return [int(self.low), int(self.high)] if self.kind in ("index", "positions") and self.high is not None else None


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
    step_omits: tuple[str, ...] = ()  # inputs a step graph does without (1-D positions follow the count)
    failure_hint: str = ""  # added to "the model's forward fails on the dummy input": how to give other inputs

    def forward_failure(self, inputs: dict[str, torch.Tensor], exc: BaseException) -> ExportError:
        """The one-line error for a model whose forward fails on this config's dummy inputs."""
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
        return ExportError(f"the model's forward fails on the dummy input ({shapes}): {first_line(exc)}{self.failure_hint}")

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
        values = torch.randint(int(spec.low), int(spec.high), shape, generator=generator, dtype=torch.int64)
        return values if spec.dtype == "float" else values.to(getattr(torch, spec.dtype))
    if spec.kind == "mask":
        mask = (torch.rand(shape, generator=generator) < 0.7).to(dtype)
        mask[..., 0] = 1  # no row fully masked
        return mask
    if spec.kind in ("uniform", "timestep"):
        value = spec.low + torch.rand(shape, generator=generator) * (spec.high - spec.low)
    else:
        value = torch.randn(shape, generator=generator)
    return value.to(dtype if spec.dtype == "float" else getattr(torch, spec.dtype))


BATCH = DimSpec(1, 2, 64)
TOKENS = DimSpec(1, 64, 16384)

ConfigFactory = Callable[[nn.Module], ExportConfig]
EXPORT_CONFIGS: dict[type, ConfigFactory] = {}


def register_export_config(model_class: type) -> Callable[[ConfigFactory], ConfigFactory]:
    """Decorator: ``factory(model) -> ExportConfig`` gives the config of ``model_class`` and its
    subclasses (as Optimum's ``register_in_tasks_manager`` does per architecture)."""

    def register(factory: ConfigFactory) -> ConfigFactory:
        EXPORT_CONFIGS[model_class] = factory
        return factory

    return register


def registered_config(model: nn.Module) -> ExportConfig | None:
    """The registered config of the nearest class of ``model`` that has one, else None."""
    factory = next((EXPORT_CONFIGS[cls] for cls in type(model).__mro__ if cls in EXPORT_CONFIGS), None)
    return factory(model) if factory is not None else None


def config_from_file(path: str | Path) -> ExportConfig:
    """A user config: {"inputs": [{"name", "shape", "dtype"?, "kind"?, "high"?}], "outputs": [...],
    "dims": {name: {"min", "opt", "max", "multiple_of"?}}, "stream_dim"?}."""
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)  # safe: a tag naming Python code is an error, never a call
            except yaml.YAMLError as exc:
                raise ExportError(f"export config {path} is not valid YAML: {first_line(exc)}") from None
        else:
            data = json.loads(text)
        dims = {name: DimSpec(**spec) for name, spec in data["dims"].items()}
        inputs = [InputSpec(i["name"], tuple(i["shape"]), i.get("dtype", "float"), i.get("kind", "float"), i.get("high", 1000),
                            i.get("low", 0)) for i in data["inputs"]]
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
