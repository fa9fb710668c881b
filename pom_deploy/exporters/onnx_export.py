"""``export_onnx``: one entry point for full and step graphs, verified against PyTorch.

Load -> resolve the export config (``config``) -> trace (``graphs``) with
``torch.onnx.export(dynamo=True)`` -> optimize (``optimize``) -> add fused-op function bodies
(``function_bodies``) and pom-deploy metadata -> save and check (``onnx_file``) -> verify in
onnxruntime (``verify``) -> move into place. Each stage is timed (``ExportResult.seconds``); the
output appears only when all of that succeeded.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..dtypes import PRECISIONS, by_precision
from ..errors import ExportError, VerificationError
from ..loading import load_model
from ..outputs import check_output_path
from ..spec import METADATA_KEY, GraphSpec
from ..tolerances import tolerances
from . import onnx_file
from .config import ExportConfig
from .frames import fit_frames
from .function_bodies import add_function_bodies
from .graphs import FullGraph, StepGraph
from .input_reading import InputDeclaration, input_choices
from .model_configs import resolve
from .programs import check_program_options, exportable
from .optimize import optimize
from .verify import VerificationReport, verify as verify_graph

DEFAULT_OPSET = 18
BF16_MIN_OPSET = 22  # HardSigmoid takes bfloat16 from opset 22 on
MIN_OPSET = 18
MAX_OPSET = 23

Progress = Callable[[str], Any]  # called with the name of each stage as it starts


@dataclass
class ExportResult:
    path: Path
    size_bytes: int
    spec: GraphSpec
    opset: int
    verification: VerificationReport | None
    seconds: dict[str, float] = field(default_factory=dict)
    external_data: Path | None = None


def export_onnx(
    model: nn.Module | str | Path,
    output: str | Path,
    *,
    config: ExportConfig | str | Path | None = None,
    inputs: list[str | InputDeclaration] | None = None,
    input_ranges: list[str] | dict[str, tuple[float, float]] | None = None,
    example_inputs: Any = None,
    architecture: dict | str | Path | None = None,
    trust_pickle: bool = False,
    precision: str = "fp32",
    opset: int | None = None,
    step: bool = False,
    fused_ops: bool = False,
    chunks_as_blocks: bool = False,
    mask: str = "none",
    cross: bool = False,
    verify: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
    dtype: str | None = None,
    fused_ops_enabled: bool | None = None,
) -> ExportResult:
    """Export ``model`` (a module or any file ``load_model`` reads) to ``output``.

    A model without an export config gets its inputs read from it (``input_reading``);
    ``inputs`` (``"ids:int64:batch,tokens"``, as ``--input``), ``input_ranges``
    (``"ids:0:50257"`` or {name: (low, high)}, as ``--input-range``) and ``example_inputs``
    (a tensor, tuple or dict of tensors, as ``torch.onnx.export`` takes them) decide or override
    what reading cannot; ``config`` overrides everything.

    A step graph mixes each chunk as the model's own masks do (token- or frame-causal), so that
    any chunking equals the model; ``chunks_as_blocks`` opts in to streaming layers that see the
    whole sequence with each chunk as one block (recorded per layer in the metadata).

    ``precision`` (fp32, fp16, bf16) and ``fused_ops`` are also accepted under their former
    names, ``dtype`` and ``fused_ops_enabled``.

    Raises ``ExportError`` for bad options or models, ``VerificationError`` when onnxruntime
    disagrees with PyTorch beyond tolerance; in both cases nothing is written.
    """
    precision = dtype if dtype is not None else precision
    fused_ops = fused_ops_enabled if fused_ops_enabled is not None else fused_ops
    output = Path(output)
    if opset is None:
        opset = BF16_MIN_OPSET if precision == "bf16" else DEFAULT_OPSET
    _check_options(output, precision, opset, force)
    stages = _Stages(progress)

    with stages("load"):
        reference = _load(model, architecture, trust_pickle, precision)
        choices = input_choices(reference, inputs, input_ranges, example_inputs)
        export_config, target = resolve(reference, config, mask, cross, choices)
        export_config = fit_frames(export_config, target)
        torch_dtype = by_precision(precision).torch()
        exported = copy.deepcopy(target).to(torch_dtype) if torch_dtype != torch.float32 else target

    with stages("trace"):
        builder = (
            StepGraph(exported, export_config, torch_dtype, chunks_as_blocks) if step else FullGraph(exported, export_config, torch_dtype)
        )
        program = builder.export(opset, fused_ops)

    with stages("optimize"):
        optimize(program.model)
        fused_nodes = add_function_bodies(program, opset, precision) if fused_ops else 0
        spec = builder.graph_spec(program, reference, precision, fused_nodes > 0)
        program.model.metadata_props[METADATA_KEY] = spec.to_json()

    with _staging_directory(output) as staging:
        staged = staging / output.name
        with stages("save"):
            external = onnx_file.save(program, staged)
        del program  # the graph is on disk: what verification needs in memory is onnxruntime's copy
        with stages("check"):
            onnx_file.check(staged)
        report = None
        if verify:
            with stages("verify"):
                report = _verified(builder, staged, target, precision, atol, rtol, spec.fused_ops)
        external_path = output.parent / external if external else None
        if external:
            os.replace(staging / external, external_path)
        os.replace(staged, output)
    return ExportResult(output, output.stat().st_size, spec, opset, report, stages.seconds, external_path)


class _Stages:
    """``with stages(name):`` reports the stage as it starts and times it into ``seconds``."""

    def __init__(self, progress: Progress | None):
        self.progress = progress or (lambda name: None)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.progress(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start


def _load(model: nn.Module | str | Path, architecture, trust_pickle: bool, precision: str) -> nn.Module:
    """The float32 reference module in eval mode; a ``torch.export`` program (file or object)
    comes back as its module, the program rewritten where the torch exporter needs it."""
    if isinstance(model, (str, Path)):
        model = load_model(model, architecture=architecture, trust_pickle=trust_pickle)
    elif isinstance(model, torch.export.ExportedProgram):
        program, model = model, model.module()
        model.exported_program = program
    program = getattr(model, "exported_program", None)
    if program is None:
        return model.eval()
    check_program_options(precision)
    exportable(program)
    return model  # (.eval() is refused by a program's module; it is inference-only already)

@contextlib.contextmanager
def _staging_directory(output: Path):
    """A temporary directory beside ``output``: the files are moved into place only at the end."""
    try:
        staging = tempfile.TemporaryDirectory(prefix=".pom-export-", dir=output.parent)
    except OSError as exc:
        raise ExportError(f"cannot write in {output.parent}: {exc.strerror}") from None
    with staging as path:
        yield Path(path)


def _verified(builder, staged: Path, target: nn.Module, precision: str, atol, rtol, fused_ops: bool) -> VerificationReport:
    report = verify_graph(builder, staged, target, *tolerances(precision, atol, rtol, ExportError), fused_ops=fused_ops)
    if not report.passed:
        raise VerificationError(report.failure_line())
    return report


def _check_options(output: Path, precision: str, opset: int, force: bool) -> None:
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")
    if precision == "bf16" and opset < BF16_MIN_OPSET:
        raise ExportError(f"bf16 needs opset {BF16_MIN_OPSET} or newer (bfloat16 HardSigmoid); got --opset {opset}")
    check_output_path(output, force, ExportError)
