"""``pom-deploy build-engine`` and ``pom-deploy compare``: ``register`` adds them to the
``pom-deploy`` parser (``cli/deploy.py`` lists this module).

Arguments are checked (and the build planned) before TensorRT is looked for, so a bad option
is reported as such on any machine; without TensorRT the commands then stop with one line
saying what to install.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ModelLoadError
from .build import HARDWARE_COMPATIBILITY, BuildOptions, build_engine, parse_size, plan_build
from .compare import ComparisonError, compare
from .environment import require_tensorrt
from .profiles import parse_profile_arg


def register(subparsers) -> None:
    build = subparsers.add_parser(
        "build-engine", help="build a TensorRT engine from an exported ONNX file",
        description="Build a TensorRT engine (and its .engine.json sidecar) with Polygraphy's TensorRT backend.",
    )
    build.add_argument("onnx", help="exported ONNX file (with pom-deploy metadata)")
    build.add_argument("-o", "--output", help="engine path (default: the ONNX path with .engine)")
    precision = build.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="allow fp16 layers (TensorRT 10.x; on 11.x export in fp16)")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                           help="allow bf16 layers (TensorRT 10.x; on 11.x export in bf16)")
    build.add_argument("--strongly-typed", action="store_true", default=None,
                       help="types come from the ONNX graph (default when it carries fp16/bf16, and always on TensorRT 11)")
    build.add_argument("--profile", action="append", metavar="NAME:MIN,OPT,MAX[;NAME:...]", default=None,
                       help="one optimization profile; inputs not named keep the metadata's ranges (their shared dims follow); "
                            "repeat for several profiles. e.g. x:1x1x32,1x256x32,4x4096x32")
    plugin = build.add_mutually_exclusive_group()
    plugin.add_argument("--plugin", metavar="LIB",
                        help="pom plugin library (default: $POM_DEPLOY_PLUGIN, next to the package, plugins/build/)")
    plugin.add_argument("--no-plugin", action="store_true", help="build PolyAggregate from its ONNX function body (unfused)")
    build.add_argument("--workspace", metavar="SIZE", help="builder workspace limit, e.g. 512M, 2G")
    build.add_argument("--hardware-compatibility", choices=sorted(HARDWARE_COMPATIBILITY),
                       help="run on other GPUs (ampere+: sm_80 and newer)")
    build.add_argument("--version-compatible", action="store_true", help="run on later TensorRT versions of the same major")
    build.add_argument("--dla-core", type=int, metavar="N", help="build for DLA core N (Jetson Orin; needs --fp16)")
    build.add_argument("--optimization-level", type=int, metavar="0-5", help="builder optimization level (TensorRT default 3)")
    build.add_argument("--timing-cache", metavar="FILE", help="timing cache file, read and updated (reuse it across builds)")
    build.add_argument("--force", action="store_true", help="overwrite an existing engine")
    build.add_argument("--verbose", action="store_true", help="show Polygraphy's and TensorRT's log")
    build.set_defaults(func=run_build_engine, precision="fp32")

    cmp = subparsers.add_parser(
        "compare", help="compare an engine with onnxruntime on the same inputs",
        description="Run the ONNX file on onnxruntime and the engine on TensorRT with the same inputs; print per-output errors.",
    )
    cmp.add_argument("onnx", help="the ONNX file the engine was built from")
    cmp.add_argument("--engine", required=True, help="the TensorRT engine")
    precision = cmp.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="fp16 tolerances (default: the engine's precision)")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="bf16 tolerances")
    cmp.add_argument("--atol", type=float, help="tolerance relative to each output's scale, its largest |value| (default by precision)")
    cmp.add_argument("--rtol", type=float, help="relative tolerance (default by precision)")
    cmp.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    cmp.add_argument("--plugin", metavar="LIB", help="pom plugin library for the engine")
    cmp.add_argument("--device", default="cpu", help="onnxruntime device of the reference run (default cpu)")
    cmp.set_defaults(func=run_compare, precision=None)


def build_options(args: argparse.Namespace) -> BuildOptions:
    """BuildOptions from parsed ``build-engine`` arguments (validated; no TensorRT needed)."""
    return BuildOptions(
        precision=args.precision,
        strongly_typed=args.strongly_typed,
        profiles=[parse_profile_arg(p) for p in args.profile] if args.profile else None,
        plugin=False if args.no_plugin else args.plugin,
        workspace=parse_size(args.workspace) if args.workspace else None,
        hardware_compatibility=args.hardware_compatibility,
        version_compatible=args.version_compatible,
        dla_core=args.dla_core,
        optimization_level=args.optimization_level,
        timing_cache=args.timing_cache,
        force=args.force,
    )


def run_build_engine(args: argparse.Namespace) -> int:
    from rich.console import Console

    options = build_options(args)
    plan = plan_build(args.onnx, args.output, options)  # bad files/options fail here, on any machine
    require_tensorrt()
    console = Console(stderr=True)
    profiles = "; ".join(", ".join(f"{n} {r}" for n, r in p.items()) for p in plan.profiles)
    with console.status(f"Building {plan.output} from {plan.onnx_path} ({options.precision}, profiles: {profiles})"):
        result = build_engine(args.onnx, args.output, options, verbose=args.verbose)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    side = result.sidecar
    plugin = side["plugin"]
    fused = (f"plugin {plugin['library']}" + (" (model-local function removed)" if plugin["function_stripped"] else "")
             if plugin["library"] else "no plugin" + (" (function bodies inlined)" if plugin.get("function_bodies_inlined") else ""))
    console.print(f"[green]built[/] {result.engine_path} in {result.seconds:.1f}s: TensorRT {side['tensorrt_version']}, "
                  f"{side['gpu_name']} (sm {side['compute_capability']}), {side['precision']}"
                  f"{' strongly typed' if side['strongly_typed'] else ''}, {len(side['profiles'])} profile(s), {fused}")
    console.print(f"sidecar: {result.sidecar_path}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.atol is not None and args.atol < 0 or args.rtol is not None and args.rtol < 0:
        raise ComparisonError("--atol/--rtol must be >= 0")
    for path in (args.onnx, args.engine):
        if not Path(path).is_file():
            raise ModelLoadError(f"{path}: no such file")
    require_tensorrt()
    report = compare(args.onnx, args.engine, precision=args.precision, atol=args.atol, rtol=args.rtol, seed=args.seed,
                     plugin=args.plugin, device=args.device)
    Console().print(report_table(report))
    return 0 if report.passed else 1


def report_table(report):
    """A rich table of a CompareReport (one row per output)."""
    from rich.table import Table

    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in report.shapes.items())
    table = Table(title=f"{report.candidate} vs {report.reference} (atol {report.atol:g}, rtol {report.rtol:g}; inputs: {shapes})")
    for column in ("output", "shape", "max abs", "mean abs", "median abs", "max rel", "mean rel", "result"):
        table.add_column(column, justify="left" if column in ("output", "shape") else "right")
    for o in report.outputs:
        table.add_row(o.name, "x".join(map(str, o.shape)), f"{o.max_absdiff:.3g}", f"{o.mean_absdiff:.3g}", f"{o.median_absdiff:.3g}",
                      f"{o.max_reldiff:.3g}", f"{o.mean_reldiff:.3g}", "[green]PASS[/]" if o.passed else "[red]FAIL[/]")
    return table
