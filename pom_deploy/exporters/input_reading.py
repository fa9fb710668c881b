"""Graph inputs read from a model that has no export config: token LMs, image models, several inputs.

The names come from ``forward``'s signature (inputs without a default; the defaulted ones keep
their defaults). What each input is comes from the module that consumes it first, found by a
``torch.fx`` symbolic trace with the layers (``torch.nn`` modules and PoM layers) as leaves. A
symbolic trace needs no example tensors at all, which is the point: meta/fake tensors or hooks
would need the very shapes and dtypes that are unknown (an ``nn.Embedding`` rejects float
probes, a ``Conv2d`` wrong channel counts). Where fx cannot trace (Python branching on tensor
values) or the consumer says nothing (arithmetic on a bare input), the input is undecided and
the error names the ``--input`` flag that decides it:

- ``nn.Embedding``: int64 ids in ``[0, num_embeddings)``: ``(batch, tokens)`` for the first
  input (a token LM), ``(batch,)`` for another (class labels);
- ``Conv1d/2d/3d``: ``(batch, in_channels, [frames,] [height,] width)``, each spatial dim a
  multiple of the conv's stride;
- ``Linear``/``LayerNorm``/a PoM layer: ``(batch, tokens, features)`` for the first input,
  ``(batch, features)`` for another (a conditioning vector);
- an input named like a diffusion time (``t``, ``timestep``, ``sigma``...): float ``(batch,)``
  in ``[0, 1000)``.

``--input NAME:DTYPE:DIMS`` and ``--input-range NAME:LOW:HIGH`` (trtexec/Polygraphy idiom), or
example tensors as ``torch.onnx.export`` takes them, decide or override any input.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ExportError, first_line
from ..models import PoMLayer
from .config import BATCH, TOKENS, DimSpec, ExportConfig, InputSpec

TIME_NAMES = ("t", "time", "times", "timestep", "timesteps", "sigma", "sigmas", "noise_level")
TIMESTEP_HIGH = 1000
SPATIAL = DimSpec(1, 8, 64)  # in units of the conv's stride
CONV_DIMS = {nn.Conv1d: ("tokens",), nn.Conv2d: ("height", "width"), nn.Conv3d: ("frames", "height", "width")}
INTEGER_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "bool")
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float")
SHAPE_READS = ("shape", "size", "dim", "ndim", "numel")  # reading a size is not consuming the data


@dataclass(frozen=True)
class InputDeclaration:
    """``--input NAME:DTYPE:DIMS``: dims are ints or names (``batch``, ``tokens``...)."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]


@dataclass(frozen=True)
class InputChoices:
    """What the user said about a model's inputs: ``--input`` declarations by name,
    ``--input-range`` value ranges by name, and example tensors by name."""

    declared: dict[str, InputDeclaration] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.declared or self.ranges or self.examples)


def parse_input(text: str) -> InputDeclaration:
    """``ids:int64:batch,tokens`` -> InputDeclaration; one-line error otherwise."""
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise ExportError(f"--input {text!r} must be NAME:DTYPE:DIMS, e.g. --input ids:int64:batch,tokens")
    name, dtype, dims = parts
    if dtype not in INTEGER_DTYPES + FLOAT_DTYPES:
        raise ExportError(f"--input {text!r}: unknown dtype {dtype!r}; expected one of {', '.join(INTEGER_DTYPES + FLOAT_DTYPES)}")
    return InputDeclaration(name, dtype, tuple(int(d) if d.isdigit() else d for d in dims.split(",")))


def parse_range(text: str) -> tuple[str, tuple[float, float]]:
    """``ids:0:50257`` -> ("ids", (0, 50257)): values in [LOW, HIGH)."""
    parts = text.split(":")
    try:
        name, low, high = parts[0], float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        name, low, high = "", 0.0, 0.0
    if len(parts) != 3 or not name or not low < high:
        raise ExportError(f"--input-range {text!r} must be NAME:LOW:HIGH with LOW < HIGH, e.g. --input-range ids:0:50257")
    return name, (low, high)


def required_inputs(model: nn.Module) -> list[str]:
    """Names of ``forward``'s inputs that have no default, in order."""
    parameters = inspect.signature(model.forward).parameters.values()
    return [p.name for p in parameters if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


class _LayerTracer(fx.Tracer):
    """Stops at layers (``torch.nn`` modules, PoM layers): what matters is which layer takes
    each input, not what it does inside. ``shallow``: every child module is a leaf, for a model
    whose own forward traces although some of its modules do not."""

    def __init__(self, shallow: bool):
        super().__init__()
        self.shallow = shallow

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return self.shallow or _is_layer(module) or super().is_leaf_module(module, qualified_name)


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, PoMLayer) or type(module).__module__.startswith("torch.nn.modules")


def first_consumers(model: nn.Module, names: list[str]) -> tuple[dict[str, nn.Module | None], str | None]:
    """{input name: the first layer its data reaches (None: none reached)}, and why fx could not
    trace the model (None when it could). A model module that takes the data first (a block of
    the user's) is read in turn, through the name its own ``forward`` gives that argument."""
    parameters = inspect.signature(model.forward).parameters
    concrete = {n: p.default for n, p in parameters.items() if n not in names and p.default is not inspect.Parameter.empty}
    try:
        graph = _LayerTracer(shallow=False).trace(model, concrete_args=concrete)
    except Exception:
        try:
            graph = _LayerTracer(shallow=True).trace(model, concrete_args=concrete)
        except Exception as exc:
            return dict.fromkeys(names), first_line(exc)
    consumers: dict[str, nn.Module | None] = dict.fromkeys(names)
    derived: dict[fx.Node, str] = {}  # node -> the input whose data it still is
    for node in graph.nodes:
        if node.op == "placeholder" and node.target in consumers:
            derived[node] = node.target
            continue
        sources = {derived[a] for a in node.all_input_nodes if a in derived}
        if not sources or (node.op in ("call_method", "call_function") and _reads_size(node)):
            continue
        if node.op == "call_module":
            for source in sources:
                if consumers[source] is None:
                    consumers[source] = _layer_taking(model.get_submodule(node.target), node, source, derived)
        elif len(sources) == 1:
            derived[node] = sources.pop()
    return consumers, None


def _layer_taking(module: nn.Module, call: fx.Node, source: str, derived: dict[fx.Node, str]) -> nn.Module | None:
    """The layer that takes ``source``'s data first inside ``module`` (called by ``call``)."""
    if _is_layer(module):
        return module
    names = list(inspect.signature(module.forward).parameters)
    arguments = {**dict(zip(names, call.args)), **call.kwargs}
    inner = [name for name, arg in arguments.items() if isinstance(arg, fx.Node) and derived.get(arg) == source]
    return first_consumers(module, inner[:1])[0].get(inner[0]) if inner else None


def _reads_size(node: fx.Node) -> bool:
    target = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return target in SHAPE_READS or (target == "getattr" and len(node.args) > 1 and node.args[1] in SHAPE_READS)


def read_inputs(model: nn.Module, declared: dict[str, InputDeclaration] | None = None,
                ranges: dict[str, tuple[float, float]] | None = None,
                examples: dict[str, torch.Tensor] | None = None) -> ExportConfig:
    """The export config of a model without one: inputs read, declared or given by example."""
    declared, ranges, examples = declared or {}, ranges or {}, examples or {}
    names = required_inputs(model)
    names += [n for n in [*declared, *examples] if n not in names]  # defaulted inputs the user asks for
    unknown = [n for n in [*declared, *ranges, *examples] if n not in inspect.signature(model.forward).parameters]
    if unknown:
        raise ExportError(f"{type(model).__name__}.forward has no input {unknown[0]!r} "
                          f"(it takes {', '.join(inspect.signature(model.forward).parameters)})")
    if not names:
        raise ExportError(f"{type(model).__name__}.forward names no input (only *args/**kwargs) to read or declare: "
                          "give an export config (--config)")
    consumers, untraceable = first_consumers(model, [n for n in names if n not in declared])
    dims: dict[str, DimSpec] = {"batch": BATCH}
    inputs = []
    for position, name in enumerate(names):
        consumer = consumers.get(name)
        if name in declared:
            spec = _declared_spec(declared[name], consumer)
        elif name in examples:
            spec = _example_spec(name, examples[name], _read_spec(name, position, consumer))
        else:
            spec = _read_spec(name, position, consumer)
            if spec is None:
                raise ExportError(_undecided(model, name, position, consumer, untraceable))
        if name in ranges:
            integer = spec.kind in ("index", "positions") or spec.dtype in INTEGER_DTYPES
            spec = replace(spec, kind="index" if integer else "uniform", low=ranges[name][0], high=ranges[name][1])
        if spec.kind == "index" and spec.high is None:
            raise ExportError(f"input {name!r} holds integers but their range is unknown: add --input-range {name}:LOW:HIGH")
        inputs.append(spec)
        strides = _conv_strides(consumer) if spec.dims[1:2] == (getattr(consumer, "in_channels", None),) else {}
        for dim in spec.dims:
            if isinstance(dim, str) and dim not in dims:
                dims[dim] = _default_dim(dim, strides.get(dim, 1))
    stream = next((d for d in ("tokens", "frames") if d in dims and d in inputs[0].dims), None)
    read = [f"{s.name} ({', '.join(map(str, s.dims))})" for s in inputs if s.name not in declared and s.name not in examples]
    hint = f"; read from the model: {', '.join(read)}; declare any that is not so with --input NAME:DTYPE:DIMS" if read else ""
    return ExportConfig(name=type(model).__name__, inputs=inputs, outputs=["output"], dims=dims, stream_dim=stream,
                        verify_sizes=_verify_sizes(dims), failure_hint=hint)


def _read_spec(name: str, position: int, consumer: nn.Module | None) -> InputSpec | None:
    main = position == 0
    if isinstance(consumer, nn.Embedding):
        return InputSpec(name, ("batch", "tokens") if main else ("batch",), "int64", "index", low=0, high=consumer.num_embeddings)
    if type(consumer) in CONV_DIMS:
        return InputSpec(name, ("batch", consumer.in_channels, *CONV_DIMS[type(consumer)]))
    features = _features(consumer)
    if features is not None:
        return InputSpec(name, ("batch", "tokens", features) if main else ("batch", features))
    if not main and name.lower() in TIME_NAMES:
        return InputSpec(name, ("batch",), kind="uniform", low=0, high=TIMESTEP_HIGH)
    return None


def _features(consumer: nn.Module | None) -> int | None:
    if isinstance(consumer, nn.Linear):
        return consumer.in_features
    if isinstance(consumer, nn.LayerNorm):
        return consumer.normalized_shape[-1]
    if isinstance(consumer, PoMLayer):
        return consumer.dim
    return None


def _undecided(model: nn.Module, name: str, position: int, consumer: nn.Module | None, untraceable: str | None) -> str:
    example = f"{name}:float32:batch,tokens,64" if position == 0 else f"{name}:float32:batch,8"
    if untraceable is not None:
        why = f"torch.fx cannot trace {type(model).__name__}.forward ({untraceable})"
    elif consumer is None:
        why = "its data reaches no layer that tells its shape"
    else:
        why = f"its first layer, {type(consumer).__name__}, does not tell its shape"
    return f"cannot read input {name!r}: {why}; add --input {name}:DTYPE:DIMS (e.g. --input {example})"


def _conv_strides(consumer: nn.Module | None) -> dict[str, int]:
    """{spatial dim name: the conv's stride along it}: an image whose sides are multiples of the
    patch (stride) is what a patchifying conv takes without cropping."""
    return dict(zip(CONV_DIMS[type(consumer)], consumer.stride)) if type(consumer) in CONV_DIMS else {}


def _declared_spec(declaration: InputDeclaration, consumer: nn.Module | None) -> InputSpec:
    integer = declaration.dtype in INTEGER_DTYPES
    high = consumer.num_embeddings if integer and isinstance(consumer, nn.Embedding) else None
    dtype = "float" if declaration.dtype in ("float", "float32") else declaration.dtype
    kind = "mask" if "mask" in declaration.name.lower() and not integer else ("index" if integer else "float")
    return InputSpec(declaration.name, declaration.dims, dtype, kind, low=0, high=high)


def _example_spec(name: str, example: torch.Tensor, read: InputSpec | None) -> InputSpec:
    """An example tensor gives dtype and rank; dims are the reader's when it read the same rank,
    else axis 0 is ``batch`` and the others keep the example's sizes."""
    dtype = str(example.dtype).removeprefix("torch.")
    if read is not None and len(read.dims) == example.dim() and (dtype in INTEGER_DTYPES) == (read.dtype in INTEGER_DTYPES):
        return read
    integer = dtype in INTEGER_DTYPES
    dims = ("batch", *example.shape[1:]) if example.dim() else ()
    return InputSpec(name, dims, dtype if integer else "float", "index" if integer else "float", low=0, high=None)


def _default_dim(name: str, multiple: int) -> DimSpec:
    if multiple != 1 or name in ("height", "width", "frames"):
        return replace(SPATIAL, multiple_of=multiple)
    return TOKENS


def _verify_sizes(dims: dict[str, DimSpec]) -> list[dict[str, int]]:
    """Besides the opt sizes: batch 3 with sizes that are no power of two (rows and columns
    apart), and the smallest sizes."""
    odd = {"batch": 3}
    for offset, (name, spec) in enumerate((n, s) for n, s in dims.items() if n != "batch"):
        odd[name] = spec.multiple_of * min(spec.max, max(spec.min, (37 if spec.multiple_of == 1 else 5) - 2 * offset))
    smallest = {name: spec.sizes()[0] for name, spec in dims.items()}
    return [odd, smallest]


def input_choices(model: nn.Module, inputs=None, input_ranges=None, example_inputs=None) -> InputChoices:
    """The Python API's arguments as ``InputChoices``: ``inputs`` as ``--input`` strings or
    ``InputDeclaration``s, ``input_ranges`` as ``--input-range`` strings or {name: (low, high)},
    ``example_inputs`` as ``torch.onnx.export`` takes them."""
    declared = [parse_input(d) if isinstance(d, str) else d for d in inputs or ()]
    if isinstance(input_ranges, dict):
        ranges = {name: (float(low), float(high)) for name, (low, high) in input_ranges.items()}
    else:
        ranges = dict(parse_range(r) for r in input_ranges or ())
    examples = example_dict(model, example_inputs) if example_inputs is not None else {}
    return InputChoices({d.name: d for d in declared}, ranges, examples)


def example_dict(model: nn.Module, examples: Any) -> dict[str, torch.Tensor]:
    """Example inputs as ``torch.onnx.export`` takes them (a tensor, a tuple or a dict of
    tensors) -> {forward's input name: tensor}."""
    if isinstance(examples, torch.Tensor):
        examples = (examples,)
    if isinstance(examples, dict):
        named = dict(examples)
    else:
        parameters = list(inspect.signature(model.forward).parameters)
        if len(examples) > len(parameters):
            raise ExportError(f"{len(examples)} example inputs for {type(model).__name__}.forward, which takes {len(parameters)}")
        named = dict(zip(parameters, examples))
    bad = [k for k, v in named.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ExportError(f"example input {bad[0]!r} is not a tensor")
    return named
