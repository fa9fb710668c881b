"""The pom-deploy metadata stored in every exported ONNX file (and engine sidecar).

A runtime reads it to use a file without the Python model: input/output names, symbolic
shapes, dtypes, suggested shape ranges (TensorRT profiles) and, for step graphs, which
inputs/outputs carry each PoM layer's state. Layout documented in docs/metadata.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .dtypes import FLOAT_TYPES, lookup

METADATA_KEY = "pom_deploy"
# 2: the export precision is stored as ``precision`` (format 1 called it ``dtype``).
SPEC_FORMAT_VERSION = 2


@dataclass
class TensorSpec:
    """One graph input or output.

    ``shape`` mixes ints and symbolic dim names (e.g. ``["batch", "tokens", 32]``);
    ``min/opt/max_shape`` are concrete shapes for inputs: the range the export config
    supports, which becomes the default TensorRT optimization profile.
    """

    name: str
    shape: list[int | str]
    dtype: str  # numpy dtype name: float32, float16, bfloat16, int64
    min_shape: list[int] | None = None
    opt_shape: list[int] | None = None
    max_shape: list[int] | None = None


@dataclass
class LayerStateSpec:
    """Explicit state I/O of one PoM layer in a step graph (``past.*`` in, ``present.*`` out)."""

    index: int
    module: str  # path of the layer in the module tree, e.g. "blocks.0.mixer"
    channels: int
    past_mean: str
    past_count: str
    present_mean: str
    present_count: str
    mean_shape: list[int | str] = field(default_factory=list)  # ["batch", 1, channels], float32
    count_shape: list[int | str] = field(default_factory=lambda: ["batch"])  # int64
    initial: str = "zeros"  # the state of a new stream: every tensor zero


@dataclass
class GraphSpec:
    kind: str  # "full" or "step"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    architecture: dict[str, Any] | None = None
    precision: str = "fp32"  # the export precision: fp32, fp16 or bf16 (element types are TensorSpec.dtype)
    state: list[LayerStateSpec] = field(default_factory=list)
    fused_ops: bool = False
    # With fused ops, the PoM layers left as standard ops: [{"module": path, "reason": why}].
    decomposed_layers: list[dict[str, str]] = field(default_factory=list)
    pom_deploy_version: str = ""
    model_digest: str = ""  # sha256 of the weights: tells a state saved from another model
    format_version: int = SPEC_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GraphSpec":
        data = json.loads(text)
        if "dtype" in data:  # format 1
            data["precision"] = _format_1_precision(data.pop("dtype"))
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        data["state"] = [LayerStateSpec(**s) for s in data.get("state", [])]
        return cls(**data)

    @property
    def state_input_names(self) -> set[str]:
        return {n for s in self.state for n in (s.past_mean, s.past_count)}

    def zero_state(self, batch: int) -> dict:
        """The state of ``batch`` new streams (step graphs): every ``past.*`` tensor zero."""
        import numpy as np

        state = {}
        for layer in self.state:
            state[layer.past_mean] = np.zeros((batch, 1, layer.channels), np.float32)
            state[layer.past_count] = np.zeros((batch,), np.int64)
        return state

    @property
    def data_inputs(self) -> list[TensorSpec]:
        """Inputs that are not state: the chunk and the model's extra inputs."""
        return [t for t in self.inputs if t.name not in self.state_input_names]


def _format_1_precision(value: str) -> str:
    """Format 1's ``dtype``: exports wrote a precision (``fp16``); its default, and hand-made
    files, a NumPy name (``float32``)."""
    as_type = lookup("name", value)
    return as_type.precision if as_type in FLOAT_TYPES else value


def shape_text(shape) -> str:
    """``(batch, tokens, 32)``: how every message and table writes a shape."""
    return "(" + ", ".join(str(d) for d in shape) + ")"
