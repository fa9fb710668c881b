"""The one output comparator of pom-deploy: Polygraphy's, element-wise.

Export verification (PyTorch vs onnxruntime) and ``pom-deploy compare`` (onnxruntime vs
TensorRT) both use it: an element passes when ``|a - r| <= atol`` or ``|a - r| / |r| <= rtol``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .errors import PomDeployError


class ComparisonError(PomDeployError):
    """The two runs cannot be compared (different outputs or shapes)."""


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
    case: str = ""  # which inputs, e.g. "batch=3 tokens=37"


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float, rtol: float,
                    names: tuple[str, str] = ("reference", "candidate"), case: str = "") -> list[OutputComparison]:
    """Per-output error figures; both sides in float64, so fp16/bf16 outputs are judged against
    an fp32 reference, not against cast noise."""
    from polygraphy.comparator import IterationResult, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    different = sorted(set(reference) ^ set(candidate))
    if different:
        raise ComparisonError(f"the two runs have different outputs: {', '.join(different)}")
    for name in reference:
        if tuple(np.shape(reference[name])) != tuple(np.shape(candidate[name])):
            raise ComparisonError(f"output {name!r}: shape {tuple(np.shape(reference[name]))} vs {tuple(np.shape(candidate[name]))}")
    as64 = lambda d: {k: np.asarray(v).astype(np.float64) for k, v in d.items()}
    before = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            compare = SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise", check_shapes=True)
            results = compare(IterationResult(as64(candidate), runner_name=names[1]),
                              IterationResult(as64(reference), runner_name=names[0]))
    finally:
        G_LOGGER.module_severity = before
    return [
        OutputComparison(name, tuple(np.shape(reference[name])), float(r.max_absdiff), float(r.mean_absdiff), float(r.median_absdiff),
                         float(r.max_reldiff), float(r.mean_reldiff), bool(r), case)
        for name, r in ((name, results[name]) for name in reference)
    ]
