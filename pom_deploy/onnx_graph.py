"""Reading an ONNX file's interface: its graph inputs and outputs as ``TensorSpec``s and its
pom-deploy metadata. The one reader for the runtime, the TensorRT build and ``inspect``."""

from __future__ import annotations

from pathlib import Path

import onnx

from .dtypes import name_of
from .spec import METADATA_KEY, GraphSpec, TensorSpec


def spec_of(model: onnx.ModelProto) -> GraphSpec | None:
    """The pom-deploy spec in a model's metadata, or None for a foreign file."""
    return next((GraphSpec.from_json(p.value) for p in model.metadata_props if p.key == METADATA_KEY), None)


def read_spec(path: str | Path) -> GraphSpec | None:
    """The pom-deploy spec stored in an ONNX file's metadata, or None for a foreign file."""
    return spec_of(onnx.load(str(path), load_external_data=False))


def tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """One graph input or output; an unnamed dynamic dim is called ``<name>_dim<axis>``."""
    tensor_type = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{value.name}_dim{axis}")
             for axis, d in enumerate(tensor_type.shape.dim)]
    return TensorSpec(value.name, shape, name_of("onnx", tensor_type.elem_type) if tensor_type.elem_type else "?")


def graph_tensors(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the main graph; initializers listed as inputs are not inputs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [tensor_spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [tensor_spec(v) for v in model.graph.output]
