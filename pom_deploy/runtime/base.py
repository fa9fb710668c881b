"""What every backend offers, so that sessions and streaming work the same on each, and the
registry of backends by kind (Polygraphy keeps one runner per backend folder; here a backend
class joins with ``@register_backend``, and ``open_backend`` finds it by kind or file suffix)."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, RuntimeInputError
from ..spec import GraphSpec, TensorSpec, shape_text


class Backend(abc.ABC):
    """A loaded graph on one runtime (onnxruntime, TensorRT) with its pom-deploy spec."""

    spec: GraphSpec | None
    name: str
    kind: str  # registry key, e.g. "onnxruntime"
    suffixes: tuple[str, ...] = ()  # files this backend opens when no kind is asked for

    @property
    @abc.abstractmethod
    def input_specs(self) -> list[TensorSpec]:
        """Inputs as the runtime reports them (names, shapes with symbolic dims, dtypes)."""

    @property
    @abc.abstractmethod
    def output_specs(self) -> list[TensorSpec]:
        """Outputs as the runtime reports them."""

    @abc.abstractmethod
    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run once on host arrays; returns every output as a host array."""

    def run_keep_on_device(self, feeds: dict[str, Any], keep: list[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Run once; the outputs named in ``keep`` are returned as device-resident handles
        (accepted back as feeds) where the backend can, host arrays otherwise."""
        outputs = self.run(feeds)
        return {k: v for k, v in outputs.items() if k not in keep}, {k: outputs[k] for k in keep}


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` available to ``open_backend`` under ``cls.kind``."""
    BACKENDS[cls.kind] = cls
    return cls


def backend_class(path, kind: str | None, default: str) -> type[Backend]:
    """The backend of ``kind``, else the one claiming the file's suffix, else ``default``."""
    if kind is not None:
        if kind not in BACKENDS:
            raise BackendUnavailableError(f"unknown backend {kind!r}; known: {', '.join(sorted(BACKENDS))}")
        return BACKENDS[kind]
    return next((cls for cls in BACKENDS.values() if path.suffix in cls.suffixes), BACKENDS[default])


def chunk_multiple(spec: GraphSpec) -> int:
    """A step graph's chunks are whole frames of this many tokens (a block-causal model's frame; 1: any)."""
    return next((spec.dim_multiples[d] for d in spec.data_inputs[0].shape if d in spec.dim_multiples), 1)


def check_whole_frames(spec: GraphSpec, chunk: np.ndarray) -> None:
    """Refuse a chunk that splits a frame: no step of it can equal the model's block-causal forward."""
    multiple = chunk_multiple(spec)
    axis = next((a for a, d in enumerate(spec.data_inputs[0].shape) if isinstance(d, str) and d != "batch"), None)
    if multiple > 1 and axis is not None and chunk.ndim > axis and chunk.shape[axis] % multiple:
        raise RuntimeInputError(f"a chunk of {chunk.shape[axis]} tokens splits a frame: this model streams whole frames "
                                f"of {multiple} tokens")


def check_feed(spec: TensorSpec, value: np.ndarray, bound: dict[str, int], multiples: dict[str, int] | None = None) -> None:
    """Raise one clear error when an array does not fit an input spec.

    ``bound`` collects the sizes of symbolic dims across the inputs of one call, so that
    e.g. a batch of 2 in one input and 3 in another is caught before the runtime sees it. What
    the graph cannot take as the model does is caught too: a size that is not a multiple the
    model needs (an image side the patch does not divide: PyTorch crops, the graph fails in a
    Reshape; a chunk that splits a block-causal model's frame) and integers outside their table
    (a class label of -1: ONNX Gather wraps it). ``multiples`` is the metadata's ``dim_multiples``.
    """
    if str(value.dtype) != spec.dtype:
        raise RuntimeInputError(f"input {spec.name!r} must be {spec.dtype}, got {value.dtype}")
    if value.ndim != len(spec.shape):
        raise RuntimeInputError(f"input {spec.name!r} must have {len(spec.shape)} dims {shape_text(spec.shape)}, "
                                f"got shape {tuple(value.shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
        if isinstance(want, int):
            if want != got:
                raise RuntimeInputError(f"input {spec.name!r} axis {axis} must be {want}, got shape {tuple(value.shape)}")
        elif want in bound and bound[want] != got:
            raise RuntimeInputError(f"input {spec.name!r} axis {axis} ({want}) is {got} but {want} is {bound[want]} in another input")
        else:
            bound[want] = got
            multiple = (multiples or {}).get(want, 1)
            if got % multiple:
                raise RuntimeInputError(f"input {spec.name!r} axis {axis} ({want}) is {got}, not a multiple of {multiple}")
    if spec.value_range and value.size:
        low, high = spec.value_range
        smallest, largest = value.min(), value.max()
        if smallest < low or largest >= high:
            bad = smallest if smallest < low else largest
            raise RuntimeInputError(
                f"input {spec.name!r} holds {bad}, outside its range [{low}, {high}) (the model indexes a table of that size)"
            )
