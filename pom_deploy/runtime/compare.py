"""``compare``: run an ONNX file (onnxruntime) and its engine (TensorRT) on the same inputs
and report per-output errors with Polygraphy's comparator, like
``polygraphy run model.onnx --onnxrt --trt``.

``compare_backends`` takes any two backends, so the comparison is tested without TensorRT;
the figures come from ``pom_deploy.comparator``, the comparator export verification uses too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..comparator import ComparisonError, OutputComparison, compare_outputs
from ..dtypes import cast
from ..runtime.base import Backend
from ..runtime.onnxrt import OnnxRuntimeBackend
from ..spec import GraphSpec, TensorSpec
from ..tolerances import tolerances
from .backend import TensorRTBackend
from .profiles import Profile, derive_profiles, profiles_from_json
from .sidecar import read_sidecar


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


def example_feeds(inputs: list[TensorSpec], profile: Profile, seed: int = 0, state_inputs: set[str] = frozenset()) -> dict[str, np.ndarray]:
    """Inputs at the profile's opt shapes: standard normal floats, small non-negative ints,
    random booleans, zeros for streaming state (a valid initial state)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = tuple(profile[spec.name].opt)
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


def compare(onnx_path: str | Path, engine_path: str | Path, *, precision: str | None = None, atol: float | None = None,
            rtol: float | None = None, seed: int = 0, plugin: str | Path | None = None, device: str = "cpu") -> CompareReport:
    """Run ``onnx_path`` on onnxruntime (``device``, CPU by default: the reference) and
    ``engine_path`` on TensorRT with the same inputs (the engine's first profile's opt shapes).

    Tolerances default by the engine's precision (``precision``, else the sidecar's), from
    ``pom_deploy.tolerances``.
    """
    sidecar = read_sidecar(engine_path)
    precision = precision or (sidecar or {}).get("precision") or "fp32"
    atol, rtol = tolerances(precision, atol, rtol, ComparisonError)
    candidate = TensorRTBackend(engine_path, plugin=plugin)
    reference = OnnxRuntimeBackend(onnx_path, device=device)
    spec: GraphSpec | None = reference.spec or candidate.spec
    inputs = list(spec.inputs) if spec is not None else reference.input_specs
    profiles = profiles_from_json(sidecar["profiles"]) if sidecar else derive_profiles(inputs)
    feeds = example_feeds(inputs, profiles[0], seed, spec.state_input_names if spec is not None else set())
    return compare_backends(reference, candidate, feeds, atol, rtol)
