"""Comparing two backends on the same inputs, whatever they are: ``example_feeds`` makes the
inputs, ``compare_backends`` runs both and reports per-output errors. The figures come from
``pom_deploy.comparator``, the comparator export verification uses too; ``pom_deploy.tensorrt.compare``
uses these for an ONNX file against its engine, and a new backend's tests can too (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..comparator import OutputComparison, compare_outputs
from ..dtypes import cast
from ..spec import TensorSpec
from .base import Backend


@dataclass
class CompareReport:
    reference: str
    candidate: str
    atol: float
    rtol: float
    shapes: dict[str, tuple[int, ...]]
    outputs: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


def example_feeds(inputs: list[TensorSpec], shapes: dict[str, tuple[int, ...]], seed: int = 0,
                  state_inputs: set[str] = frozenset()) -> dict[str, np.ndarray]:
    """Inputs of the given ``shapes`` (name -> shape): standard normal floats, small non-negative
    ints, random booleans, zeros for streaming state (a valid initial state)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = tuple(shapes[spec.name])
        if spec.name in state_inputs:
            value = np.zeros(shape)
        elif spec.dtype == "bool":
            value = rng.random(shape) < 0.5
        elif spec.dtype.startswith(("int", "uint")):
            value = rng.integers(0, 2, size=shape)
        else:
            value = rng.standard_normal(shape)
        feeds[spec.name] = cast(value, spec.dtype)
    return feeds


def compare_backends(reference: Backend, candidate: Backend, feeds: dict[str, np.ndarray], atol: float, rtol: float) -> CompareReport:
    report = CompareReport(reference.name, candidate.name, atol, rtol, {k: tuple(v.shape) for k, v in feeds.items()})
    report.outputs = compare_outputs(reference.run(dict(feeds)), candidate.run(dict(feeds)), atol, rtol,
                                     names=(reference.name, candidate.name))
    return report
