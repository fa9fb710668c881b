"""``compare``: run an ONNX file (onnxruntime) and its engine (TensorRT) on the same inputs
and report per-output errors with Polygraphy's comparator, like
``polygraphy run model.onnx --onnxrt --trt``; the backend-neutral parts are ``pom_deploy.runtime.compare``.
"""

from __future__ import annotations

from pathlib import Path

from ..comparator import ComparisonError
from ..runtime.compare import CompareReport, compare_backends, example_feeds
from ..runtime.onnxrt import OnnxRuntimeBackend
from ..spec import GraphSpec
from ..tolerances import tolerances
from .backend import TensorRTBackend
from .profiles import derive_profiles, opt_shapes, profiles_from_json
from .sidecar import read_sidecar


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
    feeds = example_feeds(inputs, opt_shapes(profiles[0]), seed, spec.state_input_names if spec is not None else set())
    return compare_backends(reference, candidate, feeds, atol, rtol)
