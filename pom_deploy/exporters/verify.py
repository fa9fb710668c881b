"""The verdict of an export's verification (figures from ``pom_deploy.comparator``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..comparator import OutputComparison


@dataclass
class VerificationReport:
    atol: float
    rtol: float
    errors: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.errors)

    @property
    def max_abs(self) -> float:
        return max((e.max_absdiff for e in self.errors), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((e.max_reldiff for e in self.errors), default=0.0)

    def failures(self) -> list[OutputComparison]:
        return [e for e in self.errors if not e.passed]
