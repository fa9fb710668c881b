"""Graph builders: what is traced for a full graph and for a step graph (its state as explicit
``past.*``/``present.*`` I/O), their example inputs and dynamic shapes, and the ``GraphSpec``
written into the file. Verification of each kind is in ``verify``."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import replace

import onnx_ir as ir
import torch
import torch.nn as nn

from ..architectures import describe
from ..digests import tensors_sha256
from ..dtypes import name_of
from ..errors import ArchitectureError, ExportError, PomDeployError, first_line
from ..ops import fused_ops
from ..spec import GraphSpec, LayerStateSpec, TensorSpec
from ..streaming import find_pom_layers, stream_layers
from ..version import __version__
from . import config as cfg
from .tracing import as_tuple, exporter_error, quiet_exporter

CHUNK_DIM = "chunk"


class GraphBuilder:
    """What full and step graphs share: tracing, naming and metadata."""

    kind = "full"

    def __init__(self, model: nn.Module, config: cfg.ExportConfig, dtype: torch.dtype):
        self.model, self.config, self.dtype = model, config, dtype

    # Filled by subclasses: the traced module and its I/O.
    input_names: list[str]
    output_names: list[str]

    def module(self) -> nn.Module:
        raise NotImplementedError

    def example_inputs(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def dynamic_shapes(self) -> tuple:
        raise NotImplementedError

    # With fused ops: the PoM layers the op does not cover, [{"module": path, "reason": why}].
    decomposed_layers: list[dict[str, str]] = []

    def export(self, opset: int, fused: bool):
        inputs = self.example_inputs()
        module = self.module()
        with torch.no_grad(), (fused_ops.fused_ops_export() if fused else contextlib.nullcontext()) as left:
            program = self._trace(module, inputs, opset, fused)
        if fused:
            paths = {id(m): name for name, m in self.model.named_modules()}
            self.decomposed_layers = [{"module": paths.get(id(layer), type(layer).__name__), "reason": reason}
                                      for layer, reason in left.items()]
        return program

    def _trace(self, module: nn.Module, inputs: dict[str, torch.Tensor], opset: int, fused: bool):
        try:
            module(*inputs.values())
        except PomDeployError:
            raise
        except Exception as exc:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
            raise ExportError(f"the model's forward fails on the dummy input ({shapes}): {first_line(exc)}") from None
        program = getattr(self.model, "exported_program", None)
        if program is not None and self.kind == "full":
            traced, args, dynamic_shapes = program, None, None  # already traced, dims and all
        else:
            traced, args, dynamic_shapes = module, tuple(inputs.values()), (self.dynamic_shapes(),)
        with warnings.catch_warnings(), quiet_exporter():
            warnings.simplefilter("ignore")
            try:
                return torch.onnx.export(
                    traced, args, dynamo=True, opset_version=opset,
                    input_names=self.input_names, output_names=self.output_names,
                    dynamic_shapes=dynamic_shapes, optimize=False, verbose=False,  # optimize.optimize, timed apart
                    custom_translation_table=fused_ops.TRANSLATION_TABLE if fused else None,
                )
            except Exception as exc:
                raise ExportError(f"torch.onnx.export failed: {exporter_error(exc)}") from None

    def input_ranges(self, name: str) -> tuple[list[int], list[int], list[int]] | None:
        raise NotImplementedError

    def graph_spec(self, program, reference: nn.Module, dtype: str, fused: bool) -> GraphSpec:
        rename_dims(program, self.config)
        graph = program.model.graph
        inputs = []
        for value in graph.inputs:
            ranges = self.input_ranges(value.name)
            inputs.append(TensorSpec(value.name, _shape(value), _dtype_name(value), *(ranges if ranges else (None, None, None))))
        outputs = [TensorSpec(v.name, _shape(v), _dtype_name(v)) for v in graph.outputs]
        try:
            architecture = describe(reference)
        except ArchitectureError:
            architecture = None
        return GraphSpec(kind=self.kind, inputs=inputs, outputs=outputs, architecture=architecture, dtype=dtype,
                         state=self.state_specs(), fused_ops=fused, decomposed_layers=self.decomposed_layers,
                         pom_deploy_version=__version__,
                         model_digest=tensors_sha256(reference.state_dict())[:16])

    def state_specs(self) -> list[LayerStateSpec]:
        return []


class PositionalCall(nn.Module):
    """forward(*tensors) -> config.run(model, named tensors): one signature for every model."""

    def __init__(self, model: nn.Module, config: cfg.ExportConfig):
        super().__init__()
        self.model, self.config = model, config
        self.names = [spec.name for spec in config.inputs]

    def forward(self, *tensors):
        return self.config.run(self.model, dict(zip(self.names, tensors)))


class FullGraph(GraphBuilder):
    def __init__(self, model, config, dtype):
        super().__init__(model, config, dtype)
        self.input_names = [spec.name for spec in config.inputs]
        self.output_names = list(config.outputs)

    def module(self):
        return PositionalCall(self.model, self.config)

    def example_inputs(self):
        return self.config.dummy_inputs(dtype=self.dtype, generator=torch.Generator().manual_seed(0))

    def dynamic_shapes(self):
        shapes = self.config.dynamic_shapes()
        return tuple(shapes[name] for name in self.input_names)

    def input_ranges(self, name):
        spec = next(s for s in self.config.inputs if s.name == name)
        return tuple(self.config.shape(spec, self.config.dim_values(w)) for w in ("min", "opt", "max"))

class StepModule(nn.Module):
    """forward(*data, *past states) -> (*outputs, *present states)."""

    def __init__(self, model: nn.Module, config: cfg.ExportConfig, layers):
        super().__init__()
        self.model, self.config, self.layers = model, config, layers
        self.names = [spec.name for spec in config.inputs]

    def forward(self, *tensors):
        data = dict(zip(self.names, tensors[: len(self.names)]))
        flat = tensors[len(self.names):]
        states = [{"mean": flat[2 * i], "count": flat[2 * i + 1]} for i in range(len(self.layers))]
        with stream_layers(self.layers, states) as streams:
            outputs = as_tuple(self.config.run(self.model, data))
        missing = [i for i, s in enumerate(streams) if s.new_state is None]
        if missing:
            raise ExportError(f"PoM layer {missing[0]} is not called by the model's forward; step export needs every layer used once")
        return (*outputs, *[t for s in streams for t in (s.new_state["mean"], s.new_state["count"])])


class StepGraph(GraphBuilder):
    kind = "step"

    def __init__(self, model, config, dtype):
        super().__init__(model, config, dtype)
        if getattr(model, "exported_program", None) is not None:
            raise ExportError("step export needs the model's modules (its PoM layers); a torch.export program has none: "
                              "export the original model, or a pom-deploy checkpoint")
        if config.stream_dim is None:
            raise ExportError(f"{config.name} has no token dim to stream over: step export needs a block-causal model "
                              "(or a bare layer with no mask and self-mixing)")
        if config.step_omits:
            config = replace(config, inputs=[s for s in config.inputs if s.name not in config.step_omits])
            self.config = config
        self.layers = [layer for _, layer in find_pom_layers(model)]
        self.layer_paths = [name for name, _ in find_pom_layers(model)]
        if not self.layers:
            raise ExportError(f"{type(model).__name__} has no PoM layer: nothing to carry state for")
        self.data_names = [spec.name for spec in config.inputs]
        self.input_names = self.data_names + [n for i in range(len(self.layers)) for n in (f"past.{i}.mean", f"past.{i}.count")]
        self.output_names = list(config.outputs) + [n for i in range(len(self.layers)) for n in (f"present.{i}.mean", f"present.{i}.count")]

    def _chunk_dims(self) -> dict[str, cfg.DimSpec]:
        dims = {k: v for k, v in self.config.dims.items() if k != self.config.stream_dim}
        opt = self.config.dims[self.config.stream_dim].sizes()[1]
        dims[CHUNK_DIM] = cfg.DimSpec(1, max(2, min(opt, 64)), 4096)
        return dims

    def _data_specs(self) -> list[cfg.InputSpec]:
        rename = lambda d: CHUNK_DIM if d == self.config.stream_dim else d
        return [cfg.InputSpec(s.name, tuple(rename(d) for d in s.dims), s.dtype, s.kind, s.high) for s in self.config.inputs]

    def _chunk_config(self) -> cfg.ExportConfig:
        return cfg.ExportConfig(self.config.name, self._data_specs(), self.config.outputs, self._chunk_dims(), self.config.call)

    def module(self):
        return StepModule(self.model, self.config, self.layers)

    def example_inputs(self):
        generator = torch.Generator().manual_seed(0)
        chunk = self._chunk_config()
        # a short chunk after a few tokens: within any RoPE table, and not a 0/1 size the tracer would specialise
        inputs = chunk.dummy_inputs({CHUNK_DIM: min(chunk.dim_values()[CHUNK_DIM], 16)}, dtype=self.dtype, generator=generator)
        batch = chunk.dim_values()["batch"]
        for i, layer in enumerate(self.layers):
            inputs[f"past.{i}.mean"] = torch.randn(batch, 1, layer.state_channels, generator=generator)
            inputs[f"past.{i}.count"] = torch.randint(2, 8, (batch,), generator=generator)
        return inputs

    def dynamic_shapes(self):
        chunk = self._chunk_config()
        shapes = chunk.dynamic_shapes()
        batch = shapes[self.data_names[0]][0] if 0 in shapes[self.data_names[0]] else chunk.torch_dim("batch")
        for i in range(len(self.layers)):
            shapes[f"past.{i}.mean"] = {0: batch}
            shapes[f"past.{i}.count"] = {0: batch}
        return tuple(shapes[name] for name in self.input_names)

    def input_ranges(self, name):
        chunk = self._chunk_config()
        values = [chunk.dim_values(w) for w in ("min", "opt", "max")]
        if name in self.data_names:
            spec = next(s for s in chunk.inputs if s.name == name)
            return tuple(chunk.shape(spec, v) for v in values)
        index = int(name.split(".")[1])
        tail = [1, self.layers[index].state_channels] if name.endswith(".mean") else []
        return tuple([v["batch"], *tail] for v in values)

    def state_specs(self):
        return [
            LayerStateSpec(i, path, layer.state_channels, f"past.{i}.mean", f"past.{i}.count", f"present.{i}.mean",
                           f"present.{i}.count", mean_shape=["batch", 1, layer.state_channels])
            for i, (path, layer) in enumerate(zip(self.layer_paths, self.layers))
        ]


def rename_dims(program, config: cfg.ExportConfig) -> None:
    """Name dims as the config does: the exporter writes ``8*tokens_blocks`` for a dim that
    must be a multiple of 8; users see ``tokens``."""
    names = dict(config.dim_aliases)
    for name, spec in config.dims.items():
        if spec.multiple_of != 1:
            names[f"{spec.multiple_of}*{name}_blocks"] = name
    names[f"{CHUNK_DIM}_blocks"] = CHUNK_DIM
    if not names:
        return
    graph = program.model.graph
    for value in [*graph.inputs, *graph.outputs]:
        if value.shape is None:
            continue
        dims = [ir.SymbolicDim(names.get(str(d), str(d))) if isinstance(d, ir.SymbolicDim) else d for d in value.shape]
        value.shape = ir.Shape(dims)


def _shape(value) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else []


def _dtype_name(value) -> str:
    return name_of("onnx", int(value.dtype))
