"""The one output comparator of pom-deploy: Polygraphy's, element-wise, against each output's scale.

Export verification (PyTorch vs onnxruntime) and ``pom-deploy compare`` (onnxruntime vs
TensorRT) both use it: an element passes when ``|a - r| <= atol * scale`` or
``|a - r| / |r| <= rtol``, where ``scale`` is the largest finite ``|r|`` of that output in that run.
An absolute floor would pass anything in outputs far below it (fp16's 1e-2 swallows every layer
with upstream's +-1e-3 ``po_coeff``); the error bounds behind the tolerances
(``pom_deploy.tolerances``) are relative to the magnitudes involved, so the floor scales with the
output. A non-finite candidate where the reference is finite always fails (an fp16 overflow is
never "within tolerance"); where the reference itself is not finite there is nothing to compare
against, and those elements are counted apart (``reference_nonfinite``).
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
    scale: float = 0.0  # the largest finite |reference|: what atol is relative to
    nonfinite: int = 0  # candidate elements that are NaN/Inf where the reference is finite
    reference_nonfinite: int = 0  # elements where the reference is NaN/Inf (not judged)

    @property
    def error_to_scale(self) -> float:
        """max |a - r| in units of the output's scale (inf when the scale is 0 and they differ)."""
        if self.scale > 0:
            return self.max_absdiff / self.scale
        return 0.0 if self.max_absdiff == 0 else float("inf")


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float, rtol: float,
                    names: tuple[str, str] = ("reference", "candidate"), case: str = "") -> list[OutputComparison]:
    """Per-output error figures; ``atol`` relative to each output's scale. Both sides in float64,
    so fp16/bf16 outputs are judged against an fp32 reference, not against cast noise."""
    from polygraphy.comparator import IterationResult, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    different = sorted(set(reference) ^ set(candidate))
    if different:
        raise ComparisonError(f"the two runs have different outputs: {', '.join(different)}")
    for name in reference:
        if tuple(np.shape(reference[name])) != tuple(np.shape(candidate[name])):
            raise ComparisonError(f"output {name!r}: shape {tuple(np.shape(reference[name]))} vs {tuple(np.shape(candidate[name]))}")
    judged = {name: _judged(reference[name], candidate[name]) for name in reference}
    before = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            compare = SimpleCompareFunc(atol={name: atol * j.scale for name, j in judged.items()}, rtol=rtol,
                                        check_error_stat="elemwise", check_shapes=True)
            results = compare(IterationResult({n: j.candidate for n, j in judged.items()}, runner_name=names[1]),
                              IterationResult({n: j.reference for n, j in judged.items()}, runner_name=names[0]))
    finally:
        G_LOGGER.module_severity = before
    return [
        OutputComparison(name, tuple(np.shape(reference[name])), float(r.max_absdiff), float(r.mean_absdiff), float(r.median_absdiff),
                         float(r.max_reldiff), float(r.mean_reldiff), bool(r) and j.nonfinite == 0, case, j.scale, j.nonfinite,
                         j.reference_nonfinite)
        for name, r, j in ((name, results[name], judged[name]) for name in reference)
    ]


@dataclass
class _Judged:
    reference: np.ndarray
    candidate: np.ndarray
    scale: float
    nonfinite: int
    reference_nonfinite: int


def _judged(reference: np.ndarray, candidate: np.ndarray) -> _Judged:
    """Both sides in float64 with the elements not judged (reference not finite) set to 0, and
    the candidate's non-finite values where the reference is finite counted (then set to 0 too,
    so that the figures describe the finite part; the count alone fails the comparison)."""
    r, c = np.asarray(reference).astype(np.float64), np.asarray(candidate).astype(np.float64)
    finite_reference, finite_candidate = np.isfinite(r), np.isfinite(c)
    broken = finite_reference & ~finite_candidate
    r = np.where(finite_reference, r, 0.0)
    c = np.where(finite_reference & finite_candidate, c, r)
    scale = float(np.abs(r).max()) if r.size else 0.0
    return _Judged(r, c, scale, int(broken.sum()), int((~finite_reference).sum()))
