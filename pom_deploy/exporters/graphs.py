"""Graph builders: what is traced for a full graph and for a step graph (its state as explicit
``past.*``/``present.*`` I/O), their example inputs and dynamic shapes, and the ``GraphSpec``
written into the file. Verification of each kind is in ``verify``."""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import replace

import onnx_ir as ir
import torch
import torch.nn as nn

from ..architectures import describe
from ..digests import tensors_sha256
from ..dtypes import name_of
from ..errors import ArchitectureError, ExportError, PomDeployError
from ..ops.fused_ops import TRANSLATION_TABLE, fused_ops_export
from ..spec import GraphSpec, LayerStateSpec, TensorSpec
from ..streaming import find_pom_layers, stream_layers, within_chunk
from ..version import __version__
from . import config as cfg
from .frames import frame_multiple, probe_masks
from .programs import PROGRAM_MODULE, UNFUSED_REASON
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

    def export(self, opset: int, fused_ops: bool):
        inputs = self.example_inputs()
        module = self.module()
        with torch.no_grad(), (fused_ops_export() if fused_ops else contextlib.nullcontext()) as left:
            program = self._trace(module, inputs, opset, fused_ops)
        if fused_ops and getattr(self.model, "exported_program", None) is not None:
            self.decomposed_layers = [{"module": PROGRAM_MODULE, "reason": UNFUSED_REASON}]
        elif fused_ops:
            paths = {id(m): name for name, m in self.model.named_modules()}
            self.decomposed_layers = [{"module": paths.get(id(layer), type(layer).__name__), "reason": reason}
                                      for layer, reason in left.items()]
        return program

    def _trace(self, module: nn.Module, inputs: dict[str, torch.Tensor], opset: int, fused_ops: bool):
        try:
            module(*inputs.values())
        except PomDeployError:
            raise
        except Exception as exc:
            raise self.config.forward_failure(inputs, exc) from None
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
                    custom_translation_table=TRANSLATION_TABLE if fused_ops else None,
                )
            except Exception as exc:
                raise ExportError(f"torch.onnx.export failed: {exporter_error(exc)}") from None

    def input_ranges(self, name: str) -> tuple[list[int], list[int], list[int]] | None:
        raise NotImplementedError

    def shape_config(self) -> cfg.ExportConfig:
        """The config whose inputs and dims are the graph's data inputs (not its state)."""
        return self.config

    def _input_spec(self, value) -> TensorSpec:
        """A graph input's metadata: shape, dtype, profile ranges and the range of integer values
        the runtime checks before running (dims that must be multiples are the graph's ``dim_multiples``)."""
        ranges = self.input_ranges(value.name) or (None, None, None)
        config = self.shape_config()
        data = next((s for s in config.inputs if s.name == value.name), None)
        if data is None:
            return TensorSpec(value.name, _shape(value), _dtype_name(value), *ranges)
        return TensorSpec(value.name, _shape(value), _dtype_name(value), *ranges, value_range=data.integer_range)

    def graph_spec(self, program, reference: nn.Module, precision: str, fused_ops: bool) -> GraphSpec:
        rename_dims(program, self.shape_config())
        graph = program.model.graph
        inputs = [self._input_spec(value) for value in graph.inputs]
        outputs = [TensorSpec(v.name, _shape(v), _dtype_name(v)) for v in graph.outputs]
        try:
            architecture = describe(reference)
        except ArchitectureError:
            architecture = None
        return GraphSpec(kind=self.kind, inputs=inputs, outputs=outputs, architecture=architecture, precision=precision,
                         state=self.state_specs(), fused_ops=fused_ops, decomposed_layers=self.decomposed_layers,
                         dim_multiples={k: d.multiple_of for k, d in self.shape_config().dims.items() if d.multiple_of != 1},
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
    """forward(*data, *past states) -> (*outputs, *present states), states in ``state`` order."""

    def __init__(self, model: nn.Module, config: cfg.ExportConfig, layers, state: list[LayerStateSpec]):
        super().__init__()
        self.model, self.config, self.layers, self.state = model, config, layers, state
        self.names = [spec.name for spec in config.inputs]

    def forward(self, *tensors):
        data = dict(zip(self.names, tensors[: len(self.names)]))
        flat = iter(tensors[len(self.names):])
        states = [{key: next(flat) for key in layer.past} for layer in self.state]
        with stream_layers(self.layers, states) as streams:
            outputs = as_tuple(self.config.run(self.model, data))
        return (*outputs, *[s.new_state[key] for s, layer in zip(streams, self.state) for key in layer.present])


class StepGraph(GraphBuilder):
    """A step graph: each PoM layer mixes a chunk as the model's own mask for it does (token- or
    frame-causal), so that any chunking equals the model; a layer without such a mask (whole
    sequence) is refused unless ``chunks_as_blocks`` opts in to streaming each chunk as one block."""

    kind = "step"

    def __init__(self, model, config, dtype, chunks_as_blocks: bool = False):
        super().__init__(model, config, dtype)
        if getattr(model, "exported_program", None) is not None:
            raise ExportError("step export needs the model's modules (its PoM layers); a torch.export program has none: "
                              "export the original model, or a pom-deploy checkpoint")
        if config.stream_dim is None:
            raise ExportError(f"{config.name} has no token dim to stream over: step export needs self-mixing layers over "
                              "tokens (no padding or (B, T, N) mask, no cross-mixing)")
        if config.step_omits:
            config = replace(config, inputs=[s for s in config.inputs if s.name not in config.step_omits])
            self.config = config
        found = find_pom_layers(model)
        self.layers = [layer for _, layer in found]
        if not self.layers:
            raise ExportError(f"{type(model).__name__} has no PoM layer: nothing to carry state for")
        masks = self._layer_masks(model, config, dtype, [path for path, _ in found], chunks_as_blocks)
        self.frame_tokens = frame_multiple(masks)
        self.state = [LayerStateSpec.for_layer(i, path, layer.state_channels, within_chunk(seen[0]))
                      for i, ((path, layer), seen) in enumerate(zip(found, masks))]
        self.data_names = [spec.name for spec in config.inputs]
        self.input_names = self.data_names + [n for layer in self.state for n in layer.past.values()]
        self.output_names = list(config.outputs) + [n for layer in self.state for n in layer.present.values()]

    @staticmethod
    def _layer_masks(model, config, dtype, paths, chunks_as_blocks) -> list[list]:
        """The mask the model gives each layer, refusing what no stream can equal."""
        masks = probe_masks(model, config, dtype)
        for path, seen in zip(paths, masks):
            where = f"PoM layer {path!r}" if path else "the PoM layer"
            if len(seen) != 1:
                raise ExportError(f"{where} is called {len(seen)} times by the model's forward; step export needs every layer used once")
            if isinstance(seen[0], torch.Tensor):
                raise ExportError(f"{where} gets a mask tensor {tuple(seen[0].shape)}: its mean takes the whole sequence, "
                                  "which no step graph can equal (streams keep causal and block-causal masks)")
        if not chunks_as_blocks and any(seen[0] is None for seen in masks):
            path = next(p for p, seen in zip(paths, masks) if seen[0] is None)
            raise ExportError(f"PoM layer {path or '(the exported layer)'!r} sees the whole sequence (no causal or block-causal "
                              "mask): no step graph can equal the model; --chunks-as-blocks streams each chunk as one block")
        return masks

    def _chunk_dims(self) -> dict[str, cfg.DimSpec]:
        """The chunk: whole frames of the model's block-causal masks, up to 4,096 tokens."""
        dims = {k: v for k, v in self.config.dims.items() if k != self.config.stream_dim}
        multiple = math.lcm(self.config.dims[self.config.stream_dim].multiple_of, self.frame_tokens)
        opt = max(2, min(self.config.dims[self.config.stream_dim].sizes()[1], 64))
        dims[CHUNK_DIM] = cfg.DimSpec(1, max(1, opt // multiple), max(1, 4096 // multiple), multiple)
        return dims

    def _data_specs(self) -> list[cfg.InputSpec]:
        rename = lambda d: CHUNK_DIM if d == self.config.stream_dim else d
        return [replace(s, dims=tuple(rename(d) for d in s.dims)) for s in self.config.inputs]

    def shape_config(self) -> cfg.ExportConfig:
        return cfg.ExportConfig(self.config.name, self._data_specs(), self.config.outputs, self._chunk_dims(), self.config.call)

    def module(self):
        return StepModule(self.model, self.config, self.layers, self.state)

    def example_inputs(self):
        generator = torch.Generator().manual_seed(0)
        chunk = self.shape_config()
        # a short chunk after a few tokens: within any RoPE table, and not a 0/1 size the tracer would specialise
        multiple = chunk.dims[CHUNK_DIM].multiple_of
        inputs = chunk.dummy_inputs({CHUNK_DIM: multiple * max(2, 16 // multiple)}, dtype=self.dtype, generator=generator)
        batch = chunk.dim_values()["batch"]
        for layer in self.state:
            inputs[layer.past_mean] = torch.randn(batch, 1, layer.channels, generator=generator)
            inputs[layer.past_count] = torch.randint(2, 8, (batch, 1), generator=generator) * multiple
        return inputs

    def dynamic_shapes(self):
        chunk = self.shape_config()
        shapes = chunk.dynamic_shapes()
        batch = shapes[self.data_names[0]][0] if 0 in shapes[self.data_names[0]] else chunk.torch_dim("batch")
        for name in [n for layer in self.state for n in layer.past.values()]:
            shapes[name] = {0: batch}
        return tuple(shapes[name] for name in self.input_names)

    def input_ranges(self, name):
        chunk = self.shape_config()
        values = [chunk.dim_values(w) for w in ("min", "opt", "max")]
        if name in self.data_names:
            spec = next(s for s in chunk.inputs if s.name == name)
            return tuple(chunk.shape(spec, v) for v in values)
        layer = next(layer for layer in self.state if name in layer.past.values())
        key = "mean" if name == layer.past_mean else "count"
        return tuple(list(layer.shapes(v["batch"])[key]) for v in values)

    def state_specs(self):
        return self.state


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
