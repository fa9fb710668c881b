"""Check an exported graph against PyTorch with Polygraphy's comparator."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}


@dataclass
class OutputError:
    case: str  # which inputs, e.g. "batch=3 tokens=37"
    output: str
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class VerificationReport:
    atol: float
    rtol: float
    errors: list[OutputError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.errors)

    @property
    def max_abs(self) -> float:
        return max((e.max_abs for e in self.errors), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((e.max_rel for e in self.errors), default=0.0)

    def failures(self) -> list[OutputError]:
        return [e for e in self.errors if not e.passed]


def compare_outputs(case: str, reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], atol: float, rtol: float) -> list[OutputError]:
    """Element-wise |a - r| <= atol or |a - r| / |r| <= rtol, per output (Polygraphy semantics).

    Both sides are compared in float64 so that fp16/bf16 outputs are judged, not cast noise.
    """
    from polygraphy.comparator import IterationResult, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    as64 = lambda d: {k: np.asarray(v, dtype=np.float64) for k, v in d.items()}  # noqa: E731
    compare = SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise", check_shapes=True)
    results = compare(IterationResult(as64(actual), runner_name="onnxruntime"), IterationResult(as64(reference), runner_name="torch"))
    return [
        OutputError(case, name, float(results[name].max_absdiff), float(results[name].max_reldiff), bool(results[name]))
        for name in reference
    ]
