"""``export_onnx``: one entry point for full and step graphs, verified against PyTorch.

Load -> resolve the export config (``config``) -> trace (``graphs``) with
``torch.onnx.export(dynamo=True)`` -> optimize (``optimize``) -> add fused-op function bodies
(``function_bodies``) and pom-deploy metadata -> save and check (``onnx_file``) -> verify in
onnxruntime (``verify``) -> move into place. Each phase is timed (``ExportResult.seconds``). The output
appears only when all of that succeeded.
"""

from __future__ import annotations

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
from .function_bodies import add_function_bodies
from .graphs import FullGraph, StepGraph
from .model_configs import resolve
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
    architecture: dict | str | Path | None = None,
    trust_pickle: bool = False,
    dtype: str = "fp32",
    opset: int | None = None,
    step: bool = False,
    fused_ops_enabled: bool = False,
    mask: str = "none",
    cross: bool = False,
    verify: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model`` (a module or any file ``load_model`` reads) to ``output``.

    Raises ``ExportError`` for bad options or models, ``VerificationError`` when onnxruntime
    disagrees with PyTorch beyond tolerance; in both cases nothing is written.
    """
    stage = progress or (lambda name: None)
    output = Path(output)
    if opset is None:
        opset = BF16_MIN_OPSET if dtype == "bf16" else DEFAULT_OPSET
    _check_options(output, dtype, opset, force)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    stage("load")
    if isinstance(model, (str, Path)):
        model = load_model(model, architecture=architecture, trust_pickle=trust_pickle)
    elif isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    reference = model if getattr(model, "exported_program", None) is not None else model.eval()  # (.eval() is refused there)
    export_config, target = resolve(reference, config, mask, cross)
    torch_dtype = by_precision(dtype).torch()
    exported = copy.deepcopy(target).to(torch_dtype) if torch_dtype != torch.float32 else target
    seconds["load"] = time.perf_counter() - clock

    stage("trace")
    clock = time.perf_counter()
    builder = (StepGraph if step else FullGraph)(exported, export_config, torch_dtype)
    program = builder.export(opset, fused_ops_enabled)
    seconds["trace"] = time.perf_counter() - clock

    stage("optimize")
    clock = time.perf_counter()
    optimize(program.model)
    fused_nodes = add_function_bodies(program, opset, dtype) if fused_ops_enabled else 0
    spec = builder.graph_spec(program, reference, dtype, fused_nodes > 0)
    program.model.metadata_props[METADATA_KEY] = spec.to_json()
    seconds["optimize"] = time.perf_counter() - clock

    try:
        staging_dir = tempfile.TemporaryDirectory(prefix=".pom-export-", dir=output.parent)
    except OSError as exc:
        raise ExportError(f"cannot write in {output.parent}: {exc.strerror}") from None
    with staging_dir as staging:
        staged = Path(staging) / output.name
        stage("save")
        clock = time.perf_counter()
        external = onnx_file.save(program, staged)
        seconds["save"] = time.perf_counter() - clock
        del program  # the graph is on disk: what verification needs in memory is onnxruntime's copy

        stage("check")
        clock = time.perf_counter()
        onnx_file.check(staged)
        seconds["check"] = time.perf_counter() - clock

        report = None
        if verify:
            stage("verify")
            clock = time.perf_counter()
            report = verify_graph(builder, staged, target, *tolerances(dtype, atol, rtol, ExportError), fused=spec.fused_ops)
            seconds["verify"] = time.perf_counter() - clock
            if not report.passed:
                worst = max(report.failures(), key=lambda e: e.max_absdiff)
                raise VerificationError(
                    f"onnxruntime disagrees with PyTorch on {worst.name!r} ({worst.case}): max abs {worst.max_absdiff:.3g}, "
                    f"max rel {worst.max_reldiff:.3g} > atol {report.atol:g} / rtol {report.rtol:g}; nothing written"
                )
        external_path = None
        if external:
            external_path = output.parent / external
            os.replace(Path(staging) / external, external_path)
        os.replace(staged, output)
    return ExportResult(output, output.stat().st_size, spec, opset, report, seconds, external_path)


def _check_options(output: Path, dtype: str, opset: int, force: bool) -> None:
    if dtype not in PRECISIONS:
        raise ExportError(f"unknown dtype {dtype!r}; expected one of {', '.join(PRECISIONS)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")
    if dtype == "bf16" and opset < BF16_MIN_OPSET:
        raise ExportError(f"bf16 needs opset {BF16_MIN_OPSET} or newer (bfloat16 HardSigmoid); got --opset {opset}")
    check_output_path(output, force, ExportError)
