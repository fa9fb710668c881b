"""Validation of an export, apart from the export itself: run the staged file in onnxruntime
(CPU) and compare it with PyTorch (figures from ``pom_deploy.comparator``, default tolerances
from ``pom_deploy.tolerances``). Full graphs at several sizes, on typical and edge inputs
(``verify_inputs``); step graphs through several chunkings against the model's own full forward
with its own masks, and its final state. A graph with fused ops is verified as any onnxruntime
runs it (the nodes' function bodies) and, where the PolyAggregate custom-op library is found,
also as pom-deploy's onnxruntime backend runs it (the op's CPU kernel)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..comparator import OutputComparison, compare_outputs
from ..dtypes import to_numpy
from ..errors import ExportError, PomDeployError, first_line
from ..ops.ort_ops import register_ort_ops
from ..spec import GraphSpec
from ..streaming import find_pom_layers, initial_states, stream_layers
from .config import ExportConfig
from ..models import PoMv2RoPE
from .graphs import CHUNK_DIM, FullGraph, GraphBuilder, StepGraph
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


def verify(
    builder: GraphBuilder, path: Path, reference: nn.Module, atol: float, rtol: float, fused_ops: bool = False
) -> VerificationReport:
    """Verify the file ``builder`` exported against ``reference`` (the float32 module)."""
    check = verify_step if isinstance(builder, StepGraph) else verify_full
    report = VerificationReport(atol, rtol)
    for label, session in _verification_sessions(path, fused_ops):
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


def step_chunkings(unit: int) -> list[list[int]]:
    """The chunkings a step graph is verified at, in units of its chunk multiple (a token or a
    frame): one unit per step, several, the whole sequence at once, and unequal sizes."""
    return [[unit] * 12, [4 * unit] * 3, [12 * unit], [unit, 5 * unit, 2 * unit, 4 * unit]]


def verify_step(builder: StepGraph, session, reference: nn.Module, atol: float, rtol: float) -> VerificationReport:
    """Stepping through several chunkings in onnxruntime == the model's own full forward with its
    own masks (outputs) and the whole sequence's state (each layer's feature mean and count),
    taken from that forward. Layers opted in to ``--chunks-as-blocks`` have no such equal: a graph
    with them is compared with eager PyTorch stepping through the same chunks."""
    report = VerificationReport(atol, rtol)
    config, unit = builder.config, builder.shape_config().dims[CHUNK_DIM].multiple_of
    whole_chunks = any(layer.within_chunk == "whole-chunk" for layer in builder.state)
    for index, chunks in enumerate(step_chunkings(unit)):
        inputs = config.dummy_inputs({"batch": 2, config.stream_dim: sum(chunks)}, dtype=torch.float32,
                                     generator=torch.Generator().manual_seed(200 + index))
        if whole_chunks:
            expected, states = _eager_steps(reference, config, inputs, chunks)
        else:
            expected, states = _model_forward_and_states(reference, config, inputs)
        actual, final = _run_steps(session, builder, inputs, chunks)
        names = ("torch", "onnxruntime")
        case = f"chunks={chunks} batch=2"
        report.errors += compare_outputs({config.outputs[0]: _float_numpy(expected)}, {config.outputs[0]: actual},
                                         atol, rtol, names=names, case=case)
        for layer, state in zip(builder.state, states):
            report.errors += compare_outputs({layer.present_mean: state["mean"].numpy()}, {layer.present_mean: final[layer.past_mean]},
                                             atol, rtol, names=names, case=case)
            report.errors += compare_outputs({layer.present_count: state["count"].numpy()},
                                             {layer.present_count: final[layer.past_count]}, 0, 0, names=names, case=case)
    return report


def _model_forward_and_states(model: nn.Module, config: ExportConfig, inputs):
    """The model's full forward with its own masks, and each PoM layer's state after the whole
    sequence: the mean of its features over every token (the layer's own unmasked aggregation
    of the input that forward gave it) and the token count."""
    layers = [layer for _, layer in find_pom_layers(model)]
    calls: dict[int, inspect.BoundArguments] = {}

    def record(index: int):
        def hook(module, args, kwargs):
            calls.setdefault(index, inspect.signature(module.forward).bind(*args, **kwargs))
        return hook

    hooks = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            output = as_tuple(config.run(model, inputs))[0]
            states = [_whole_sequence_state(layer, calls[i].arguments) for i, layer in enumerate(layers)]
    finally:
        for hook in hooks:
            hook.remove()
    return output, states


def _whole_sequence_state(layer, arguments: dict) -> dict[str, torch.Tensor]:
    xq = arguments["xq"]
    xc = arguments.get("xc")
    h, _ = layer._projections(xq, xq if xc is None else xc)
    if isinstance(layer, PoMv2RoPE):
        mean = layer._rotated_aggregate(h, None, arguments.get("positions"), arguments.get("positions_hw"))
    else:
        mean = layer._aggregate(h, None)
    return {"mean": mean.float(), "count": torch.full((h.shape[0], 1), h.shape[1], dtype=torch.int64)}


def _eager_steps(model: nn.Module, config: ExportConfig, inputs, chunks):
    """The model stepped in eager PyTorch through ``chunks``: (outputs, final states)."""
    layers = [layer for _, layer in find_pom_layers(model)]
    states, outputs = initial_states(layers, next(iter(inputs.values())).shape[0]), []
    with torch.no_grad():
        for piece in _split(config, inputs, chunks):
            with stream_layers(layers, states) as streams:
                outputs.append(as_tuple(config.run(model, piece))[0])
            states = [s.new_state for s in streams]
    return torch.cat(outputs, dim=_stream_axis(config)), states


def _verification_sessions(path: Path, fused_ops: bool):
    """[(label for the report's cases, onnxruntime CPU session)]: the file as written and, for a
    fused graph where the PolyAggregate custom-op library is found, the file with it."""
    import onnxruntime as ort

    sessions = [("", _session(path, ort.SessionOptions()))]
    if fused_ops:
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


def _run_steps(session, builder: StepGraph, inputs, chunks) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The step graph run through ``chunks`` from zero state: (outputs, final state by past name)."""
    spec = GraphSpec("step", [], [], state=builder.state)
    state = spec.zero_state(next(iter(inputs.values())).shape[0])
    outputs = []
    names = [o.name for o in session.get_outputs()]
    for piece in _split(builder.config, inputs, chunks):
        feeds = {k: _feed(v, builder.dtype if v.is_floating_point() else v.dtype) for k, v in piece.items()}
        result = dict(zip(names, session.run(None, {**feeds, **state})))
        outputs.append(result[builder.config.outputs[0]])
        state = {spec.past_of[name]: result[name] for name in spec.state_output_names}
    return np.concatenate(outputs, axis=_stream_axis(builder.config)), state


def _stream_axis(config: ExportConfig) -> int:
    return [a for a, d in enumerate(config.inputs[0].dims) if d == config.stream_dim][0]


def block_causal_mask(chunks: list[int], batch: int) -> torch.Tensor:
    """(B, N, N) 0/1 mask: token i sees token j when j's chunk is not after i's (what a layer
    streamed with ``--chunks-as-blocks`` computes)."""
    ids = torch.repeat_interleave(torch.arange(len(chunks)), torch.tensor(chunks))
    return (ids.unsqueeze(0) <= ids.unsqueeze(1)).float().expand(batch, -1, -1)


def _feed(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return to_numpy(tensor, str(dtype).removeprefix("torch."))


def _float_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).numpy() if tensor.is_floating_point() else tensor.numpy()
