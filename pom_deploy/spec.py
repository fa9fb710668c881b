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
from .errors import PomDeployError

METADATA_KEY = "pom_deploy"
SPEC_FORMAT_VERSION = 2
# 2: the export precision is stored as ``precision`` (format 1 called it ``dtype``), every state
# tensor has a non-batch dim (count (batch, 1), was (batch,)), each layer records how it mixes a
# chunk (``within_chunk``), dims record their multiples (``dim_multiples``).
# Files of format 1 are read as they are: their shapes say (batch,), their layers "whole-chunk".


@dataclass
class TensorSpec:
    """One graph input or output.

    ``shape`` mixes ints and symbolic dim names (e.g. ``["batch", "tokens", 32]``);
    ``min/opt/max_shape`` are concrete shapes for inputs: the range the export config
    supports, which becomes the default TensorRT optimization profile. ``value_range``
    ([low, high)) bounds an integer input that indexes a table (token ids, class labels);
    runtimes check it before running, with the graph's ``dim_multiples``.
    """

    name: str
    shape: list[int | str]
    dtype: str  # numpy dtype name: float32, float16, bfloat16, int64
    min_shape: list[int] | None = None
    opt_shape: list[int] | None = None
    max_shape: list[int] | None = None
    value_range: list[int] | None = None


@dataclass
class LayerStateSpec:
    """Explicit state I/O of one PoM layer in a step graph (``past.*`` in, ``present.*`` out).

    ``for_layer`` is the one place these names are made; every reader (export, verification,
    sessions, serving) takes them from here (``past``, ``present``, ``zeros``)."""

    index: int
    module: str  # path of the layer in the module tree, e.g. "blocks.0.mixer"
    channels: int
    past_mean: str
    past_count: str
    present_mean: str
    present_count: str
    mean_shape: list[int | str] = field(default_factory=list)  # ["batch", 1, channels], float32
    count_shape: list[int | str] = field(default_factory=lambda: ["batch", 1])  # int64; ["batch"] in format 1
    initial: str = "zeros"  # the state of a new stream: every tensor zero
    # How the step mixes one chunk's tokens, as the model's mask for the layer does:
    # "token-causal", "frame-causal" (whole frames) or "whole-chunk" (no mask: opted in, or format 1).
    within_chunk: str = "whole-chunk"

    @classmethod
    def for_layer(cls, index: int, module: str, channels: int, within_chunk: str) -> "LayerStateSpec":
        """The state of the ``index``-th PoM layer: ``past.{index}.mean``/``.count`` in,
        ``present.{index}.*`` out (as Optimum's ``add_past_key_values`` names a decoder's cache)."""
        return cls(index, module, channels, f"past.{index}.mean", f"past.{index}.count", f"present.{index}.mean",
                   f"present.{index}.count", mean_shape=["batch", 1, channels], count_shape=["batch", 1],
                   within_chunk=within_chunk)

    @property
    def past(self) -> dict[str, str]:
        """{"mean": input name, "count": input name}."""
        return {"mean": self.past_mean, "count": self.past_count}

    @property
    def present(self) -> dict[str, str]:
        """{"mean": output name, "count": output name}."""
        return {"mean": self.present_mean, "count": self.present_count}

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """{"mean": shape, "count": shape} for ``batch`` streams."""
        mean = self.mean_shape or ["batch", 1, self.channels]
        return {key: tuple(batch if d == "batch" else int(d) for d in shape)
                for key, shape in (("mean", mean), ("count", self.count_shape))}

    def zeros(self, batch: int) -> dict:
        """{past name: zero array} for ``batch`` new streams."""
        import numpy as np

        shapes = self.shapes(batch)
        return {self.past_mean: np.zeros(shapes["mean"], np.float32), self.past_count: np.zeros(shapes["count"], np.int64)}


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
    # Dims whose sizes must be multiples, e.g. {"chunk": 8} (a block-causal model's frame size),
    # {"height": 4, "width": 4} (an image side: the patch).
    dim_multiples: dict[str, int] = field(default_factory=dict)
    pom_deploy_version: str = ""
    model_digest: str = ""  # sha256 of the weights: tells a state saved from another model
    format_version: int = SPEC_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GraphSpec":
        data = json.loads(text)
        if data.get("format_version", 1) > SPEC_FORMAT_VERSION:
            raise PomDeployError(f"the file's pom-deploy metadata is format {data['format_version']}, newer than this "
                                 f"pom-deploy reads ({SPEC_FORMAT_VERSION}): upgrade pom-deploy "
                                 f"(it was written by {data.get('pom_deploy_version') or 'a newer version'})")
        if "dtype" in data:  # format 1
            data["precision"] = _format_1_precision(data.pop("dtype"))
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        data["state"] = [LayerStateSpec(**s) for s in data.get("state", [])]
        return cls(**data)

    @property
    def state_input_names(self) -> set[str]:
        return {n for s in self.state for n in s.past.values()}

    @property
    def state_output_names(self) -> list[str]:
        return [n for s in self.state for n in s.present.values()]

    @property
    def past_of(self) -> dict[str, str]:
        """{present name: the past name it feeds at the next step}."""
        return {s.present[key]: s.past[key] for s in self.state for key in ("mean", "count")}

    def zero_state(self, batch: int) -> dict:
        """The state of ``batch`` new streams (step graphs): every ``past.*`` tensor zero."""
        return {name: value for layer in self.state for name, value in layer.zeros(batch).items()}

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
