"""The TensorRT check behind ``scripts/check_tensorrt.sh``, written against the public API.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pom_deploy, installed or not
from pom_deploy import export_onnx, load, save_checkpoint
from pom_deploy.comparator import compare_outputs
from pom_deploy.errors import PomDeployError
from pom_deploy.models.zoo import create_zoo_model
from pom_deploy.tensorrt import build_engine, compare, current_environment, find_plugin_library
from pom_deploy.tensorrt.environment import version_tuple
from pom_deploy.tolerances import tolerances

ZOO_MODELS = ("video_pom", "dit_pom")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_tensorrt", description=__doc__.split("\n\n")[1])
    parser.add_argument("--dir", type=Path, default=Path("trt-check"), help="work folder (default ./trt-check)")
    parser.add_argument("--models", default=",".join(ZOO_MODELS), help=f"zoo models (default {','.join(ZOO_MODELS)})")
    parser.add_argument("--plugin", help="pom plugin library (default: the usual search, $POM_DEPLOY_PLUGIN first)")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

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

    def export(model_path: Path, out: Path, **options) -> Path:
        return export_onnx(model_path, out, fused_ops=True, force=True, **options).path

    for name in args.models.split(","):
        model_path = args.dir / f"{name}.pt"
        save_checkpoint(create_zoo_model(name, seed=0), model_path)
        sources = {"fp32": export(model_path, args.dir / f"{name}.onnx")}
        sources["fp16"] = export(model_path, args.dir / f"{name}.fp16.onnx", precision="fp16") if trt11 else sources["fp32"]
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
    row = ["video_pom", "step", "fp32", "plugin" if plugin else "function body"]
    try:
        step_onnx = export(model_path, folder / "video_pom.step.onnx", step=True)
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
    atol, rtol = tolerances("fp32")
    (result,) = compare_outputs({"output": ref}, {"output": out}, atol, rtol, names=("onnxruntime", "tensorrt"))
    table.add_row(*row, f"{seconds:.1f}", f"{result.max_absdiff:.2e}", f"{result.max_reldiff:.2e}",
                  "[green]PASS[/]" if result.passed else "[red]FAIL[/]")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
