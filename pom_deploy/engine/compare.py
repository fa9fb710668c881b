"""``compare``: run an ONNX file (onnxruntime) and its engine (TensorRT) on the same inputs
and report per-output errors with Polygraphy's comparator, like
``polygraphy run model.onnx --onnxrt --trt``.

``compare_backends`` and ``compare_outputs`` take any two backends / output dicts, so the
comparison itself is tested without TensorRT.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PomDeployError
from ..runtime.base import Backend
from ..spec import GraphSpec, TensorSpec
from .profiles import Profile, derive_profiles, profiles_from_json
from .sidecar import read_sidecar

# (atol, rtol) by engine precision; an element passes when within either.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}


class ComparisonError(PomDeployError):
    """The two runs cannot be compared (different outputs, shapes)."""


@dataclass
class OutputComparison:
    name: str
    shape: tuple[int, ...]
    max_absdiff: float
    mean_absdiff: float
    median_absdiff: float
    max_reldiff: float
    mean_reldiff: float
    passed: bool


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
        feeds[spec.name] = _as_dtype(value, spec.dtype)
    return feeds


def _as_dtype(value: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: PLC0415

        return value.astype(ml_dtypes.bfloat16)
    return value.astype(dtype)


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float, rtol: float,
                    names: tuple[str, str] = ("onnxruntime", "tensorrt")) -> list[OutputComparison]:
    """Per-output error figures from Polygraphy's simple comparison (elementwise atol OR rtol)."""
    from polygraphy.comparator import CompareFunc, IterationResult  # noqa: PLC0415
    from polygraphy.logger import G_LOGGER  # noqa: PLC0415

    missing = sorted(set(reference) ^ set(candidate))
    if missing:
        raise ComparisonError(f"the two runs have different outputs: {', '.join(missing)}")
    for name in reference:
        if tuple(reference[name].shape) != tuple(candidate[name].shape):
            raise ComparisonError(f"output {name!r}: shape {tuple(reference[name].shape)} vs {tuple(candidate[name].shape)}")
    # Compare in float32: fp16/bf16 candidates against an fp32 reference.
    ref = {k: _float32(v) for k, v in reference.items()}
    cand = {k: _float32(v) for k, v in candidate.items()}
    before = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            func = CompareFunc.simple(atol=atol, rtol=rtol)
            results = func(IterationResult(outputs=ref, runner_name=names[0]), IterationResult(outputs=cand, runner_name=names[1]))
    finally:
        G_LOGGER.module_severity = before
    return [
        OutputComparison(name, tuple(reference[name].shape), float(r.max_absdiff), float(r.mean_absdiff),
                         float(r.median_absdiff), float(r.max_reldiff), float(r.mean_reldiff), bool(r))
        for name, r in results.items()
    ]


def _float32(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype.kind == "f" or str(value.dtype) == "bfloat16" else value


def compare_backends(reference: Backend, candidate: Backend, feeds: dict[str, np.ndarray], atol: float, rtol: float) -> CompareReport:
    report = CompareReport(reference.name, candidate.name, atol, rtol, {k: tuple(v.shape) for k, v in feeds.items()})
    report.outputs = compare_outputs(reference.run(dict(feeds)), candidate.run(dict(feeds)), atol, rtol,
                                     names=(reference.name, candidate.name))
    return report


def compare(onnx_path: str | Path, engine_path: str | Path, *, precision: str | None = None, atol: float | None = None,
            rtol: float | None = None, seed: int = 0, plugin: str | Path | None = None, device: str = "cpu") -> CompareReport:
    """Run ``onnx_path`` on onnxruntime (``device``, CPU by default: the reference) and
    ``engine_path`` on TensorRT with the same inputs (the engine's first profile's opt shapes).

    Tolerances default by the engine's precision (``precision``, else the sidecar's).
    """
    from ..runtime.onnxrt import OnnxRuntimeBackend  # noqa: PLC0415
    from ..runtime.tensorrt import TensorRTBackend  # noqa: PLC0415

    sidecar = read_sidecar(engine_path)
    precision = precision or (sidecar or {}).get("precision") or "fp32"
    if precision not in DEFAULT_TOLERANCES:
        raise ComparisonError(f"unknown precision {precision!r}; expected one of {', '.join(DEFAULT_TOLERANCES)}")
    default_atol, default_rtol = DEFAULT_TOLERANCES[precision]
    atol, rtol = (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)
    candidate = TensorRTBackend(engine_path, plugin=plugin)
    reference = OnnxRuntimeBackend(onnx_path, device=device)
    spec: GraphSpec | None = reference.spec or candidate.spec
    inputs = list(spec.inputs) if spec is not None else reference.input_specs
    profiles = profiles_from_json(sidecar["profiles"]) if sidecar else derive_profiles(inputs)
    feeds = example_feeds(inputs, profiles[0], seed, spec.state_input_names if spec is not None else set())
    return compare_backends(reference, candidate, feeds, atol, rtol)
