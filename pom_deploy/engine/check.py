"""``python -m pom_deploy.engine.check``: the TensorRT check behind ``scripts/check_tensorrt.sh``.

Needs TensorRT and a GPU. For each zoo model: save it, export it with fused ops (and in
fp16 too on TensorRT 11, whose fp16 must come from the ONNX types), build engines in fp32
and fp16, with and without the pom plugin, compare each with onnxruntime on the CPU, and
stream the video model's step graph through both backends (state kept on the GPU). Prints
a table; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import PomDeployError
from .build import build_engine
from .compare import compare
from .environment import current_environment, version_tuple
from .plugins import find_plugin_library

ZOO_MODELS = ("video_pom", "dit_pom")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_tensorrt", description=__doc__.split("\n\n")[1])
    parser.add_argument("--dir", type=Path, default=Path("trt-check"), help="work folder (default ./trt-check)")
    parser.add_argument("--models", default=",".join(ZOO_MODELS), help=f"zoo models (default {','.join(ZOO_MODELS)})")
    parser.add_argument("--plugin", help="pom plugin library (default: the usual search, $POM_DEPLOY_PLUGIN first)")
    args = parser.parse_args(argv)

    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from .. import save_checkpoint  # noqa: PLC0415
    from ..cli import export as export_cli  # noqa: PLC0415
    from ..models.zoo import create_zoo_model  # noqa: PLC0415

    console = Console(stderr=True)
    try:
        env = current_environment()
    except PomDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    trt11 = version_tuple(env["tensorrt_version"])[:1] >= (11,)
    plugin = find_plugin_library(args.plugin)
    console.print(f"TensorRT {env['tensorrt_version']} on {env['gpu_name']} (sm {env['compute_capability']}); "
                  f"plugin: {plugin or 'not found (fused rows skipped)'}")
    args.dir.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"pom-deploy TensorRT check: TensorRT {env['tensorrt_version']}, {env['gpu_name']}")
    for column in ("model", "graph", "precision", "PolyAggregate", "build s", "max abs err", "max rel err", "result"):
        table.add_column(column)
    failures = 0

    def export(model_path: Path, out: Path, *extra: str) -> Path:
        if export_cli.main([str(model_path), "--onnx", "--fused-ops", "-o", str(out), "--force", "-q", *extra]):
            raise PomDeployError(f"pom-export failed for {out.name}")
        return out

    for name in args.models.split(","):
        model_path = args.dir / f"{name}.pt"
        save_checkpoint(create_zoo_model(name, seed=0), model_path)
        sources = {"fp32": export(model_path, args.dir / f"{name}.onnx")}
        sources["fp16"] = export(model_path, args.dir / f"{name}.fp16.onnx", "--dtype", "fp16") if trt11 else sources["fp32"]
        for precision in ("fp32", "fp16"):
            for fused in (True, False):
                row = [name, "full", precision, "plugin" if fused else "function body"]
                if fused and plugin is None:
                    table.add_row(*row, "", "", "", "[yellow]skipped[/]")
                    continue
                engine = args.dir / f"{name}.{precision}.{'plugin' if fused else 'unfused'}.engine"
                try:
                    with console.status(f"building {engine.name}"):
                        built = build_engine(sources[precision], engine, precision=precision,
                                             plugin=str(plugin) if fused else False, force=True, timing_cache=args.dir / "timing.cache")
                    report = compare(sources[precision], engine, precision=precision, plugin=plugin if fused else None)
                except PomDeployError as exc:
                    failures += 1
                    table.add_row(*row, "", "", "", f"[red]error: {exc}[/]")
                    continue
                worst = max(report.outputs, key=lambda o: o.max_absdiff)
                failures += not report.passed
                table.add_row(*row, f"{built.seconds:.1f}", f"{worst.max_absdiff:.2e}", f"{worst.max_reldiff:.2e}",
                              "[green]PASS[/]" if report.passed else "[red]FAIL[/]")
        if name == "video_pom":
            failures += _streaming_row(table, console, model_path, args.dir, export, plugin)
    Console().print(table)
    return 1 if failures else 0


def _streaming_row(table, console, model_path: Path, folder: Path, export, plugin) -> int:
    """Stream 8 frames through the step graph on onnxruntime (CPU) and on TensorRT."""
    from ..runtime import load  # noqa: PLC0415

    row = ["video_pom", "step", "fp32", "plugin" if plugin else "function body"]
    try:
        step_onnx = export(model_path, folder / "video_pom.step.onnx", "--step")
        engine = folder / "video_pom.step.engine"
        start = time.perf_counter()
        build_engine(step_onnx, engine, plugin=str(plugin) if plugin else False, force=True)
        seconds = time.perf_counter() - start
        reference, candidate = load(step_onnx, device="cpu"), load(engine)
        chunk = reference.chunk_input
        frame = int((reference.spec.architecture or {}).get("config", {}).get("frame_tokens") or chunk.opt_shape[1])
        tokens = np.random.default_rng(0).standard_normal((1, 8 * frame, chunk.shape[-1])).astype(chunk.dtype)
        ref = np.concatenate([reference.step(tokens[:, i:i + frame]) for i in range(0, tokens.shape[1], frame)], axis=1)
        out = np.concatenate([candidate.step(tokens[:, i:i + frame]) for i in range(0, tokens.shape[1], frame)], axis=1)
    except PomDeployError as exc:
        table.add_row(*row, "", "", "", f"[red]error: {exc}[/]")
        return 1
    err = float(np.max(np.abs(ref.astype(np.float64) - out)))
    rel = float(np.max(np.abs(ref.astype(np.float64) - out) / (np.abs(ref) + 1e-12)))
    passed = err <= 1e-3 + 1e-3 * float(np.max(np.abs(ref)))
    table.add_row(*row, f"{seconds:.1f}", f"{err:.2e}", f"{rel:.2e}", "[green]PASS[/]" if passed else "[red]FAIL[/]")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
