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


def check_feed(spec: TensorSpec, value: np.ndarray, bound: dict[str, int]) -> None:
    """Raise one clear error when an array does not fit an input spec.

    ``bound`` collects the sizes of symbolic dims across the inputs of one call, so that
    e.g. a batch of 2 in one input and 3 in another is caught before the runtime sees it.
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
