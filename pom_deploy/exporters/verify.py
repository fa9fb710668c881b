"""Validation of an export, apart from the export itself: run the staged file in onnxruntime
(CPU) and compare it with PyTorch (figures from ``pom_deploy.comparator``, default tolerances
from ``pom_deploy.tolerances``). Full graphs at several sizes, on typical and edge inputs
(``verify_inputs``); step graphs chunk by chunk
against the block-causal full forward. A graph with fused ops is verified as any onnxruntime
runs it (the nodes' function bodies) and, where the PolyAggregate custom-op library is found,
also as pom-deploy's onnxruntime backend runs it (the op's CPU kernel)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..comparator import OutputComparison, compare_outputs
from ..dtypes import to_numpy
from ..errors import ExportError, PomDeployError, first_line
from ..ops.ort_ops import register_ort_ops
from ..streaming import find_pom_layers, initial_states, stream_layers
from .config import ExportConfig
from .graphs import FullGraph, GraphBuilder, StepGraph
from .tracing import as_tuple
from .verify_inputs import MAX_ELEMENTS, verification_cases


@dataclass
class VerificationReport:
    atol: float
    rtol: float
    errors: list[OutputComparison] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # cases not run, with why

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

    def failure_line(self) -> str:
        """One line on the worst failure: NaN/Inf where PyTorch is finite first, then the
        largest error in units of its output's scale."""
        worst = max(self.failures(), key=lambda e: (e.nonfinite, e.error_to_scale))
        if worst.nonfinite:
            return (f"onnxruntime gives {worst.nonfinite:,} NaN/Inf values in {worst.name!r} ({worst.case}) where PyTorch "
                    "is finite; nothing written")
        return (f"onnxruntime disagrees with PyTorch on {worst.name!r} ({worst.case}): max abs {worst.max_absdiff:.3g} "
                f"= {worst.error_to_scale:.3g} of the output's scale {worst.scale:.3g} > atol {self.atol:g} "
                f"(relative to the scale) / rtol {self.rtol:g}; nothing written")


def verify(builder: GraphBuilder, path: Path, reference: nn.Module, atol: float, rtol: float, fused: bool = False) -> VerificationReport:
    """Verify the file ``builder`` exported against ``reference`` (the float32 module)."""
    check = verify_step if isinstance(builder, StepGraph) else verify_full
    report = VerificationReport(atol, rtol)
    for label, session in _verification_sessions(path, fused):
        checked = check(builder, session, reference, atol, rtol)
        for comparison in checked.errors:
            comparison.case = f"{comparison.case}{label}"
            report.errors.append(comparison)
        report.skipped = checked.skipped
    return report


def verify_full(builder: FullGraph, session, reference: nn.Module, atol: float, rtol: float) -> VerificationReport:
    """The full graph in onnxruntime == PyTorch, at the opt sizes and the config's other sizes,
    and on edge inputs at the ends of every dim (``verify_inputs.verification_cases``)."""
    report = VerificationReport(atol, rtol)
    for index, verification_case in enumerate(verification_cases(builder.config)):
        case = verification_case.label(builder.config)
        if verification_case.elements(builder.config) > MAX_ELEMENTS:
            report.skipped.append(f"{case}: inputs over {MAX_ELEMENTS:,} elements")
            continue
        inputs = verification_case.inputs(builder.config, torch.Generator().manual_seed(100 + index))
        with torch.no_grad():
            expected = as_tuple(builder.config.run(reference, inputs))
        feeds = {k: _feed(v, builder.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
        actual = session.run(None, feeds)
        report.errors += compare_outputs(
            {n: _float_numpy(t) for n, t in zip(builder.output_names, expected)},
            {n: a for n, a in zip(builder.output_names, actual)}, atol, rtol, names=("torch", "onnxruntime"), case=case)
    return report


def verify_step(builder: StepGraph, session, reference: nn.Module, atol: float, rtol: float) -> VerificationReport:
    """Stepping through chunks in onnxruntime == the whole sequence in PyTorch with the
    block-causal mask of those chunks (equal and unequal chunk sizes)."""
    report = VerificationReport(atol, rtol)
    unit = builder.config.dims[builder.config.stream_dim].multiple_of
    for index, chunks in enumerate(([2 * unit] * 3, [unit, 3 * unit, 1, 2 * unit + 1])):
        batch = 2 + index
        full = builder.config.dummy_inputs({"batch": batch, builder.config.stream_dim: sum(chunks)}, dtype=torch.float32,
                                           generator=torch.Generator().manual_seed(200 + index))
        expected = _block_causal_reference(reference, builder.config, full, chunks)
        actual = _run_steps(session, builder.config, builder.layers, full, chunks, builder.dtype)
        case = f"chunks={chunks} batch={batch}"
        report.errors += compare_outputs({builder.config.outputs[0]: _float_numpy(expected)}, {builder.config.outputs[0]: actual},
                                         atol, rtol, names=("torch", "onnxruntime"), case=case)
    return report


def _verification_sessions(path: Path, fused: bool):
    """[(label for the report's cases, onnxruntime CPU session)]: the file as written and, for a
    fused graph where the PolyAggregate custom-op library is found, the file with it."""
    import onnxruntime as ort

    sessions = [("", _session(path, ort.SessionOptions()))]
    if fused:
        options = ort.SessionOptions()
        try:
            library = register_ort_ops(options)
        except PomDeployError as exc:
            raise ExportError(f"cannot verify with the PolyAggregate CPU kernel: {exc}") from None
        if library is not None:
            sessions.append((" (PolyAggregate CPU kernel)", _session(path, options)))
    return sessions


def _session(path: Path, options):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(
            f"onnxruntime (CPU) cannot run the exported graph to verify it: {first_line(exc).split(' : ')[-1]}; "
            "verify where a provider supports it, or pass --no-verify"
        ) from None


def _split(config: ExportConfig, inputs: dict[str, torch.Tensor], chunks: list[int]):
    """Per-chunk inputs: tensors with the stream dim are sliced, others passed whole."""
    out, start = [], 0
    for size in chunks:
        piece = {}
        for spec in config.inputs:
            axes = [a for a, d in enumerate(spec.dims) if d == config.stream_dim]
            piece[spec.name] = inputs[spec.name].narrow(axes[0], start, size) if axes else inputs[spec.name]
        out.append(piece)
        start += size
    return out


def _run_steps(session, config, layers, inputs, chunks, dtype) -> np.ndarray:
    batch = next(iter(inputs.values())).shape[0]
    state = {}
    for i, s in enumerate(initial_states(layers, batch)):
        state[f"past.{i}.mean"], state[f"past.{i}.count"] = s["mean"].numpy(), s["count"].numpy()
    outputs = []
    names = [o.name for o in session.get_outputs()]
    for piece in _split(config, inputs, chunks):
        feeds = {k: _feed(v, dtype if v.is_floating_point() else v.dtype) for k, v in piece.items()}
        result = dict(zip(names, session.run(None, {**feeds, **state})))
        outputs.append(result[config.outputs[0]])
        state = {k.replace("present.", "past."): v for k, v in result.items() if k.startswith("present.")}
    axis = [a for a, d in enumerate(config.inputs[0].dims) if d == config.stream_dim][0]
    return np.concatenate(outputs, axis=axis)


def block_causal_mask(chunks: list[int], batch: int) -> torch.Tensor:
    """(B, N, N) 0/1 mask: token i sees token j when j's chunk is not after i's."""
    ids = torch.repeat_interleave(torch.arange(len(chunks)), torch.tensor(chunks))
    return (ids.unsqueeze(0) <= ids.unsqueeze(1)).float().expand(batch, -1, -1)


def _block_causal_reference(model: nn.Module, config: ExportConfig, inputs, chunks) -> torch.Tensor:
    """The full forward with the block-causal mask of ``chunks`` when the config knows how to
    give one (bare layers, block-causal models), else eager PyTorch stepping with the same chunks."""
    batch = next(iter(inputs.values())).shape[0]
    with torch.no_grad():
        if config.masked_call is not None:
            return config.masked_call(model, inputs, block_causal_mask(chunks, batch))
        layers = [layer for _, layer in find_pom_layers(model)]
        state, outputs = initial_states(layers, batch), []
        for piece in _split(config, inputs, chunks):
            with stream_layers(layers, state) as streams:
                outputs.append(as_tuple(config.run(model, piece))[0])
            state = [s.new_state for s in streams]
        axis = [a for a, d in enumerate(config.inputs[0].dims) if d == config.stream_dim][0]
        return torch.cat(outputs, dim=axis)


def _feed(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return to_numpy(tensor, str(dtype).removeprefix("torch."))


def _float_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).numpy() if tensor.is_floating_point() else tensor.numpy()
