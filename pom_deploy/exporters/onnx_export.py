"""``export_onnx``: one entry point for full and step graphs, verified against PyTorch.

Load -> resolve the export config -> trace with ``torch.onnx.export(dynamo=True)`` ->
add fused-op function bodies and pom-deploy metadata -> check (onnx checker, shape
inference) -> verify in onnxruntime -> move into place. The output appears only when all
of that succeeded.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn as nn

from .. import __version__
from ..digests import tensors_sha256
from ..errors import ExportError, PomDeployError, VerificationError, first_line
from ..ops import fused_ops
from ..outputs import check_output_path
from ..spec import METADATA_KEY, GraphSpec, LayerStateSpec, TensorSpec
from ..streaming import find_pom_layers, initial_states, stream_layers
from . import config as cfg
from ..comparator import compare_outputs
from ..tolerances import tolerances
from .verify import VerificationReport

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_OPSET = 18
BF16_MIN_OPSET = 22  # HardSigmoid takes bfloat16 from opset 22 on
MIN_OPSET = 18
MAX_OPSET = 23
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3  # protobuf's limit for one file
CHUNK_DIM = "chunk"

Progress = Callable[[str], Any]  # called with the name of each stage as it starts


@dataclass
class ExportResult:
    path: Path
    size_bytes: int
    spec: GraphSpec
    opset: int
    verification: VerificationReport | None
    seconds: dict[str, float] = field(default_factory=dict)
    external_data: Path | None = None


def export_onnx(
    model: nn.Module | str | Path,
    output: str | Path,
    *,
    config: cfg.ExportConfig | str | Path | None = None,
    architecture: dict | str | Path | None = None,
    trust_pickle: bool = False,
    dtype: str = "fp32",
    opset: int | None = None,
    step: bool = False,
    fused_ops_enabled: bool = False,
    mask: str = "none",
    cross: bool = False,
    verify: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model`` (a module or any file ``load_model`` reads) to ``output``.

    Raises ``ExportError`` for bad options or models, ``VerificationError`` when onnxruntime
    disagrees with PyTorch beyond tolerance; in both cases nothing is written.
    """
    stage = progress or (lambda name: None)
    output = Path(output)
    if opset is None:
        opset = BF16_MIN_OPSET if dtype == "bf16" else DEFAULT_OPSET
    _check_options(output, dtype, opset, force)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    stage("load")
    if isinstance(model, (str, Path)):
        from ..loading import load_model

        model = load_model(model, architecture=architecture, trust_pickle=trust_pickle)
    elif isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    reference = model if getattr(model, "exported_program", None) is not None else model.eval()  # (.eval() is refused there)
    export_config, target = cfg.resolve(reference, config, mask, cross)
    torch_dtype = DTYPES[dtype]
    exported = copy.deepcopy(target).to(torch_dtype) if torch_dtype != torch.float32 else target
    seconds["load"] = time.perf_counter() - clock

    stage("export")
    clock = time.perf_counter()
    if step:
        builder = _StepGraph(exported, export_config, torch_dtype)
    else:
        builder = _FullGraph(exported, export_config, torch_dtype)
    program = builder.export(opset, fused_ops_enabled)
    fused_nodes = _add_function_bodies(program, opset, dtype) if fused_ops_enabled else 0
    spec = builder.graph_spec(program, reference, dtype, fused_nodes > 0)
    program.model.metadata_props[METADATA_KEY] = spec.to_json()
    seconds["export"] = time.perf_counter() - clock

    try:
        staging_dir = tempfile.TemporaryDirectory(prefix=".pom-export-", dir=output.parent)
    except OSError as exc:
        raise ExportError(f"cannot write in {output.parent}: {exc.strerror}") from None
    with staging_dir as staging:
        staged = Path(staging) / output.name
        stage("check")
        clock = time.perf_counter()
        external = _save(program, staged)
        _check(staged)
        seconds["check"] = time.perf_counter() - clock

        report = None
        if verify:
            stage("verify")
            clock = time.perf_counter()
            report = builder.verify(staged, target, *tolerances(dtype, atol, rtol, ExportError))
            seconds["verify"] = time.perf_counter() - clock
            if not report.passed:
                worst = max(report.failures(), key=lambda e: e.max_absdiff)
                raise VerificationError(
                    f"onnxruntime disagrees with PyTorch on {worst.name!r} ({worst.case}): max abs {worst.max_absdiff:.3g}, "
                    f"max rel {worst.max_reldiff:.3g} > atol {report.atol:g} / rtol {report.rtol:g}; nothing written"
                )
        external_path = None
        if external:
            external_path = output.parent / external
            os.replace(Path(staging) / external, external_path)
        os.replace(staged, output)
    return ExportResult(output, output.stat().st_size, spec, opset, report, seconds, external_path)


def _check_options(output: Path, dtype: str, opset: int, force: bool) -> None:
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")
    if dtype == "bf16" and opset < BF16_MIN_OPSET:
        raise ExportError(f"bf16 needs opset {BF16_MIN_OPSET} or newer (bfloat16 HardSigmoid); got --opset {opset}")
    check_output_path(output, force, ExportError)


class _Graph:
    """What full and step graphs share: tracing, naming, metadata and verification."""

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

    def export(self, opset: int, fused: bool):
        inputs = self.example_inputs()
        module = self.module()
        with torch.no_grad(), (fused_ops.fused_ops_export() if fused else contextlib.nullcontext()):
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
            with warnings.catch_warnings(), _quiet_exporter():
                warnings.simplefilter("ignore")
                try:
                    return torch.onnx.export(
                        traced, args, dynamo=True, opset_version=opset,
                        input_names=self.input_names, output_names=self.output_names,
                        dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
                        custom_translation_table=fused_ops.TRANSLATION_TABLE if fused else None,
                    )
                except Exception as exc:
                    raise ExportError(f"torch.onnx.export failed: {_exporter_error(exc)}") from None

    def input_ranges(self, name: str) -> tuple[list[int], list[int], list[int]] | None:
        raise NotImplementedError

    def graph_spec(self, program, reference: nn.Module, dtype: str, fused: bool) -> GraphSpec:
        from ..architectures import describe
        from ..errors import ArchitectureError

        _rename_dims(program, self.config)
        graph = program.model.graph
        inputs = []
        for value in graph.inputs:
            ranges = self.input_ranges(value.name)
            inputs.append(TensorSpec(value.name, _shape(value), _dtype_name(value),
                                     *(ranges if ranges else (None, None, None))))
        outputs = [TensorSpec(v.name, _shape(v), _dtype_name(v)) for v in graph.outputs]
        try:
            architecture = describe(reference)
        except ArchitectureError:
            architecture = None
        return GraphSpec(kind=self.kind, inputs=inputs, outputs=outputs, architecture=architecture, dtype=dtype,
                         state=self.state_specs(), fused_ops=fused, pom_deploy_version=__version__,
                         model_digest=_weights_digest(reference))

    def state_specs(self) -> list[LayerStateSpec]:
        return []

    def verify(self, path: Path, reference: nn.Module, atol: float, rtol: float) -> VerificationReport:
        raise NotImplementedError


class _PositionalCall(nn.Module):
    """forward(*tensors) -> config.run(model, named tensors): one signature for every model."""

    def __init__(self, model: nn.Module, config: cfg.ExportConfig):
        super().__init__()
        self.model, self.config = model, config
        self.names = [spec.name for spec in config.inputs]

    def forward(self, *tensors):
        return self.config.run(self.model, dict(zip(self.names, tensors)))


class _FullGraph(_Graph):
    def __init__(self, model, config, dtype):
        super().__init__(model, config, dtype)
        self.input_names = [spec.name for spec in config.inputs]
        self.output_names = list(config.outputs)

    def module(self):
        return _PositionalCall(self.model, self.config)

    def example_inputs(self):
        return self.config.dummy_inputs(dtype=self.dtype, generator=torch.Generator().manual_seed(0))

    def dynamic_shapes(self):
        shapes = self.config.dynamic_shapes()
        return tuple(shapes[name] for name in self.input_names)

    def input_ranges(self, name):
        spec = next(s for s in self.config.inputs if s.name == name)
        return tuple(self.config.shape(spec, self.config.dim_values(w)) for w in ("min", "opt", "max"))

    def verify(self, path, reference, atol, rtol):
        session = _verification_session(path)
        report = VerificationReport(atol, rtol)
        for index, sizes in enumerate([self.config.dim_values()] + self.config.verify_sizes):
            inputs = self.config.dummy_inputs(sizes, dtype=torch.float32, generator=torch.Generator().manual_seed(100 + index))
            with torch.no_grad():
                expected = _as_tuple(self.config.run(reference, inputs))
            feeds = {k: _to_numpy(v, self.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
            actual = session.run(None, feeds)
            case = " ".join(f"{k}={v}" for k, v in sizes.items() if k in self.config.dims)
            report.errors += compare_outputs(
                {n: _float_numpy(t) for n, t in zip(self.output_names, expected)},
                {n: a for n, a in zip(self.output_names, actual)}, atol, rtol, names=("torch", "onnxruntime"), case=case)
        return report


class _StepModule(nn.Module):
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
            outputs = _as_tuple(self.config.run(self.model, data))
        missing = [i for i, s in enumerate(streams) if s.new_state is None]
        if missing:
            raise ExportError(f"PoM layer {missing[0]} is not called by the model's forward; step export needs every layer used once")
        return (*outputs, *[t for s in streams for t in (s.new_state["mean"], s.new_state["count"])])


class _StepGraph(_Graph):
    kind = "step"

    def __init__(self, model, config, dtype):
        super().__init__(model, config, dtype)
        if getattr(model, "exported_program", None) is not None:
            raise ExportError("step export needs the model's modules (its PoM layers); a torch.export program has none: "
                              "export the original model, or a pom-deploy checkpoint")
        if config.stream_dim is None:
            raise ExportError(f"{config.name} has no token dim to stream over: step export needs a block-causal model "
                              "(or a bare layer with no mask and self-mixing)")
        if isinstance(model, cfg.LayerCall) and isinstance(model.layer, cfg.PoMv2RoPE) and not model.layer.rope_2d:
            # streamed 1-D positions continue from the token count: no positions input
            config = replace(config, inputs=[s for s in config.inputs if s.name != "positions"])
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
        rename = lambda d: CHUNK_DIM if d == self.config.stream_dim else d  # noqa: E731
        return [cfg.InputSpec(s.name, tuple(rename(d) for d in s.dims), s.dtype, s.kind, s.high) for s in self.config.inputs]

    def _chunk_config(self) -> cfg.ExportConfig:
        return cfg.ExportConfig(self.config.name, self._data_specs(), self.config.outputs, self._chunk_dims(), self.config.call)

    def module(self):
        return _StepModule(self.model, self.config, self.layers)

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

    def verify(self, path, reference, atol, rtol):
        """Stepping through chunks in onnxruntime == the whole sequence in PyTorch with the
        block-causal mask of those chunks (equal and unequal chunk sizes)."""
        session = _verification_session(path)
        report = VerificationReport(atol, rtol)
        unit = self.config.dims[self.config.stream_dim].multiple_of
        for index, chunks in enumerate(([2 * unit] * 3, [unit, 3 * unit, 1, 2 * unit + 1])):
            batch = 2 + index
            full = self.config.dummy_inputs({"batch": batch, self.config.stream_dim: sum(chunks)}, dtype=torch.float32,
                                            generator=torch.Generator().manual_seed(200 + index))
            expected = _block_causal_reference(reference, self.config, full, chunks)
            actual = _run_steps(session, self.config, self.layers, full, chunks, self.dtype)
            case = f"chunks={chunks} batch={batch}"
            report.errors += compare_outputs({self.config.outputs[0]: _float_numpy(expected)}, {self.config.outputs[0]: actual},
                                             atol, rtol, names=("torch", "onnxruntime"), case=case)
        return report


def _verification_session(path: Path):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(
            f"onnxruntime (CPU) cannot run the exported graph to verify it: {first_line(exc).split(' : ')[-1]}; "
            "verify where a provider supports it, or pass --no-verify"
        ) from None


def _split(config: cfg.ExportConfig, inputs: dict[str, torch.Tensor], chunks: list[int]):
    """Per-chunk inputs: tensors with the stream dim are sliced, others passed whole."""
    out, start = [], 0
    for size in chunks:
        piece = {}
        for spec in config.inputs:
            axes = [a for a, d in enumerate(spec.dims) if d == config.stream_dim]
            piece[spec.name] = inputs[spec.name].narrow(axes[0], start, size) if axes else inputs[spec.name]
        out.append(piece)
        start += size
    return out


def _run_steps(session, config, layers, inputs, chunks, dtype) -> np.ndarray:
    batch = next(iter(inputs.values())).shape[0]
    state = {}
    for i, s in enumerate(initial_states(layers, batch)):
        state[f"past.{i}.mean"], state[f"past.{i}.count"] = s["mean"].numpy(), s["count"].numpy()
    outputs = []
    names = [o.name for o in session.get_outputs()]
    for piece in _split(config, inputs, chunks):
        feeds = {k: _to_numpy(v, dtype if v.is_floating_point() else v.dtype) for k, v in piece.items()}
        result = dict(zip(names, session.run(None, {**feeds, **state})))
        outputs.append(result[config.outputs[0]])
        state = {k.replace("present.", "past."): v for k, v in result.items() if k.startswith("present.")}
    axis = [a for a, d in enumerate(config.inputs[0].dims) if d == config.stream_dim][0]
    return np.concatenate(outputs, axis=axis)


def block_causal_mask(chunks: list[int], batch: int) -> torch.Tensor:
    """(B, N, N) 0/1 mask: token i sees token j when j's chunk is not after i's."""
    ids = torch.repeat_interleave(torch.arange(len(chunks)), torch.tensor(chunks))
    return (ids.unsqueeze(0) <= ids.unsqueeze(1)).float().expand(batch, -1, -1)


def _block_causal_reference(model: nn.Module, config: cfg.ExportConfig, inputs, chunks) -> torch.Tensor:
    """The full forward with a block-causal mask when the model takes one (bare layers and
    the zoo), else eager PyTorch stepping with the same chunks."""
    batch = next(iter(inputs.values())).shape[0]
    with torch.no_grad():
        if isinstance(model, cfg.LayerCall):
            layer, positions = model.layer, {}
            if isinstance(layer, cfg.PoMv2RoPE):  # streamed 1-D positions are 0..N-1; 2-D ones are inputs
                positions = {"positions_hw": inputs["positions_hw"]} if layer.rope_2d else {"positions": torch.arange(sum(chunks))}
            return layer(inputs["xq"], mask=block_causal_mask(chunks, batch), **positions)
        if isinstance(model, cfg.BlockCausalVideoPoM):
            return model(inputs["tokens"], mask=block_causal_mask(chunks, batch))
        layers = [layer for _, layer in find_pom_layers(model)]
        state, outputs = initial_states(layers, batch), []
        for piece in _split(config, inputs, chunks):
            with stream_layers(layers, state) as streams:
                outputs.append(_as_tuple(config.run(model, piece))[0])
            state = [s.new_state for s in streams]
        axis = [a for a, d in enumerate(config.inputs[0].dims) if d == config.stream_dim][0]
        return torch.cat(outputs, dim=axis)


# --- fused-op function bodies ----------------------------------------------------------

class _DecomposedOp(nn.Module):
    def __init__(self, variant: str, degree: int, mode: str):
        super().__init__()
        self.variant, self.degree, self.mode = variant, degree, mode

    def forward(self, x, *rest):
        rest = list(rest)
        coeff = rest.pop(0) if self.variant == "v2" else None
        mask = rest.pop(0) if self.mode == "masked" else None
        return fused_ops.decomposed(x, coeff, mask, self.variant, self.degree, self.mode)


def _add_function_bodies(program, opset: int, dtype: str) -> int:
    """Give each PolyAggregate node a model-local function in standard ops (its overload);
    returns the number of such nodes (0 when no aggregation was fusable: RoPE layers and
    block-causal or (B, T, N) masks stay decomposed)."""
    from onnx_ir import serde

    model = program.model
    bodies: dict[str, Any] = {}
    count = 0
    for node in _all_nodes(model.graph):
        if node.op_type != fused_ops.ref.OP_TYPE or node.domain != fused_ops.ref.OP_DOMAIN:
            continue
        count += 1
        variant, degree, mode = (node.attributes[a].value for a in ("variant", "degree", "mode"))
        overload = fused_ops.overload_name(variant, mode, degree, dtype)
        node.overload = overload
        if overload not in bodies:
            bodies[overload] = _function_body(variant, degree, mode, DTYPES[dtype], opset, overload)
    for function in bodies.values():
        model.functions[(function.domain, function.name, function.overload)] = serde.deserialize_function(function)
    if bodies and model.ir_version < 10:
        model.ir_version = 10  # function overloads
    return count


def _function_body(variant: str, degree: int, mode: str, dtype: torch.dtype, opset: int, overload: str) -> onnx.FunctionProto:
    """Trace the decomposed op with the torch exporter and wrap its graph as a FunctionProto."""
    channels = torch.export.Dim("channels_blocks", min=1) * degree if variant == "v1" else torch.export.Dim("channels", min=2)
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", min=2)
    args = [torch.randn(2, 3, 4 * degree, dtype=dtype)]
    shapes = [{0: batch, 1: tokens, 2: channels}]
    if variant == "v2":
        args.append(torch.randn(4 * degree, degree, dtype=dtype))
        shapes.append({0: channels})
    if mode == "masked":
        args.append(torch.ones(2, 3, dtype=dtype))
        shapes.append({0: batch, 1: tokens})
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_DecomposedOp(variant, degree, mode), tuple(args), dynamo=True, opset_version=opset,
                                    dynamic_shapes=(shapes[0], tuple(shapes[1:])) if len(shapes) > 1 else (shapes[0],),
                                    optimize=True, verbose=False)
    graph = program.model_proto.graph
    constants = [onnx.helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer]
    names = ["x", "coeff", "mask"] if variant == "v2" else ["x", "mask"]
    function = onnx.helper.make_function(
        fused_ops.ref.OP_DOMAIN, fused_ops.ref.OP_TYPE,
        inputs=[i.name for i in graph.input], outputs=[o.name for o in graph.output],
        nodes=constants + list(graph.node),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        attributes=list(fused_ops.ATTRIBUTES),
        doc_string=f"PolyAggregate {variant} mode={mode} degree={degree} in standard ops; inputs {names[:len(graph.input)]}",
    )
    function.overload = overload
    return function


def _all_nodes(graph):
    for node in graph:
        yield node
        for attr in node.attributes.values():
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.value)


# --- saving and checking ---------------------------------------------------------------

def _save(program, path: Path) -> str | None:
    """Save; weights go to ``<name>.data`` beside it when the model exceeds 2 GB."""
    size = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None)
    external = size > EXTERNAL_DATA_THRESHOLD
    program.save(str(path), external_data=external)
    if not external:
        return None
    data_files = [p.name for p in path.parent.iterdir() if p.name != path.name]
    return data_files[0] if data_files else None


def _check(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {first_line(exc)}") from None


def _rename_dims(program, config: cfg.ExportConfig) -> None:
    """Name dims as the config does: the exporter writes ``8*tokens_blocks`` for a dim that
    must be a multiple of 8; users see ``tokens``."""
    names = dict(config.dim_aliases)
    for name, spec in config.dims.items():
        if spec.multiple_of != 1:
            names[f"{spec.multiple_of}*{name}_blocks"] = name
    names[f"{CHUNK_DIM}_blocks"] = CHUNK_DIM
    if not names:
        return
    import onnx_ir as ir

    graph = program.model.graph
    for value in [*graph.inputs, *graph.outputs]:
        if value.shape is None:
            continue
        dims = [ir.SymbolicDim(names.get(str(d), str(d))) if isinstance(d, ir.SymbolicDim) else d for d in value.shape]
        value.shape = ir.Shape(dims)


def _shape(value) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else []


def _dtype_name(value) -> str:
    return {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16", "INT64": "int64", "INT32": "int32",
            "DOUBLE": "float64", "BOOL": "bool"}.get(value.dtype.name, value.dtype.name.lower())


# --- small helpers ---------------------------------------------------------------------

def _weights_digest(model: nn.Module) -> str:
    return tensors_sha256(model.state_dict())[:16]


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _to_numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    if dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
    return tensor.to(dtype).numpy()


def _float_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).numpy() if tensor.is_floating_point() else tensor.numpy()


def _exporter_error(exc: BaseException) -> str:
    """The torch exporter wraps the cause in a long report: keep its innermost summary."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {first_line(exc)}"


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs progress and torchvision notices through logging and stdout."""
    import io
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
