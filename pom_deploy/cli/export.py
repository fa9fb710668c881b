"""``pom-export``: a PyTorch PoM model to a verified ONNX graph."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..exporters.config import MASK_KINDS
from ..dtypes import PRECISIONS
from ..exporters.onnx_export import BF16_MIN_OPSET, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ExportResult, export_onnx
from ..spec import shape_text
from .common import human_size, run_command, stderr_console, version_text

STAGES = {"load": "Loading model", "trace": "Tracing with torch.onnx (dynamo)", "optimize": "Optimizing graph (constant folding, rewrites)",
          "save": "Saving", "check": "Checking graph (onnx.checker, shape inference)", "verify": "Verifying in onnxruntime against PyTorch"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pom-export",
        description="Export a PyTorch PoM model to ONNX and verify it against PyTorch in onnxruntime. "
                    "MODEL is a pom-deploy checkpoint, a state_dict (with --arch/--arch-file), a pickled module "
                    "(with --trust-pickle) or a torch.export .pt2 archive.",
        epilog="examples:\n  pom-export model.pt --onnx\n  pom-export model.pt --onnx --step -o model.step.onnx\n"
               "  pom-export lm.pt --trust-pickle --input ids:int64:batch,tokens --input-range ids:0:50257\n"
               "  pom-export weights.pt --arch-file arch.json --precision fp16 --fused-ops",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="model file")
    parser.add_argument("--onnx", action="store_true", help="export to ONNX (the only format so far; the default)")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: MODEL with .onnx, or .step.onnx with --step)")
    parser.add_argument("--step", action="store_true", help="export a stateful step graph (state as explicit past.*/present.* I/O)")
    parser.add_argument("--chunks-as-blocks", action="store_true",
                        help="--step for a model whose PoM layers see the whole sequence: each chunk mixes as one block "
                             "(equals no full forward; recorded in the metadata)")
    parser.add_argument(
        "--fused-ops", action="store_true", help="emit PolyAggregate nodes (TensorRT plugin; onnxruntime inlines their function)"
    )
    parser.add_argument(
        "--precision", default="fp32", help=f"I/O and weight precision: {', '.join(PRECISIONS)} (default fp32); reductions stay float32"
    )
    parser.add_argument("--dtype", dest="precision", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # its former name
    parser.add_argument(
        "--opset", type=int, help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default {DEFAULT_OPSET}; {BF16_MIN_OPSET} for bf16)"
    )
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--verify", dest="verify", action="store_true", default=True, help="compare with PyTorch in onnxruntime (default)")
    verify.add_argument("--no-verify", dest="verify", action="store_false", help="skip the comparison")
    parser.add_argument("--atol", type=float, help="tolerance relative to each output's scale, its largest |value| "
                        "(default by precision: fp32 1e-4, fp16 1e-2, bf16 5e-2)")
    parser.add_argument("--rtol", type=float, help="relative tolerance (default by precision, as --atol)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    loading = parser.add_argument_group("model loading")
    loading.add_argument("--arch", help="architecture of a raw state_dict: PoMv1, PoMv2, PoMv2RoPE, video_pom, dit_pom")
    loading.add_argument("--arch-config", help='its config as JSON, e.g. \'{"dim": 64, "degree": 2, "expand": 2}\'')
    loading.add_argument("--arch-file", type=Path,
                         help="architecture as a JSON/YAML file ({name, config} or upstream {generation, class, ctor})")
    loading.add_argument("--trust-pickle", action="store_true", help="allow a pickled nn.Module (unpickling runs code from the file)")
    graph = parser.add_argument_group("graph")
    graph.add_argument("--input", action="append", default=[], metavar="NAME:DTYPE:DIMS", dest="inputs",
                       help="declare an input the model's layers do not tell, e.g. ids:int64:batch,tokens or cond:float32:batch,8 "
                            "(repeatable; dims are sizes or names)")
    graph.add_argument(
        "--input-range",
        action="append",
        default=[],
        metavar="NAME:LOW:HIGH",
        dest="input_ranges",
        help="values of an input in [LOW, HIGH), e.g. ids:0:50257 (verification data; integer ranges are checked at run time)",
    )
    graph.add_argument("--config", type=Path, help="export config file (JSON/YAML); overrides what is read from the model and --input")
    graph.add_argument("--mask", default="none", help=f"mask input of a bare PoM layer: {', '.join(MASK_KINDS)} (default none)")
    graph.add_argument("--cross", action="store_true", help="bare PoM layer: separate context input xc (cross-mixing)")
    out = parser.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    out.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--version", action="version", version=version_text("pom-export"))
    return parser


def _architecture(args):
    from ..errors import ArchitectureError

    if args.arch_file:
        return args.arch_file
    if args.arch:
        try:
            config = json.loads(args.arch_config) if args.arch_config else {}
        except json.JSONDecodeError as exc:
            raise ArchitectureError(f"--arch-config is not valid JSON: {exc}") from None
        return {"name": args.arch, "config": config}
    if args.arch_config:
        raise ArchitectureError("--arch-config needs --arch")
    return None


def default_output(model: Path, step: bool) -> Path:
    return model.with_suffix(".step.onnx" if step else ".onnx")


def export_command(args: argparse.Namespace) -> int:
    output = args.output or default_output(args.model, args.step)
    console = stderr_console(args.quiet or args.json)
    start = time.perf_counter()
    with console.status("Starting") as status:  # transient: an error leaves just its one line
        result = export_onnx(
            args.model, output, architecture=_architecture(args), trust_pickle=args.trust_pickle, config=args.config,
            inputs=args.inputs, input_ranges=args.input_ranges, precision=args.precision, opset=args.opset, step=args.step,
            fused_ops=args.fused_ops, chunks_as_blocks=args.chunks_as_blocks, mask=args.mask,
            cross=args.cross, verify=args.verify, atol=args.atol, rtol=args.rtol, force=args.force,
            progress=lambda stage: status.update(STAGES[stage] + "..."),
        )
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps(result_json(result, elapsed), indent=2))
    elif not args.quiet:
        print_summary(Console(), result, elapsed)
    return 0


def result_json(result: ExportResult, elapsed: float) -> dict:
    report = result.verification
    return {
        "path": str(result.path), "size_bytes": result.size_bytes, "opset": result.opset, "kind": result.spec.kind,
        "precision": result.spec.precision, "fused_ops": result.spec.fused_ops, "decomposed_layers": result.spec.decomposed_layers,
        "inputs": [{"name": t.name, "shape": t.shape, "dtype": t.dtype} for t in result.spec.inputs],
        "outputs": [{"name": t.name, "shape": t.shape, "dtype": t.dtype} for t in result.spec.outputs],
        "verification": None if report is None else {
            "passed": report.passed, "atol": report.atol, "rtol": report.rtol, "max_abs": report.max_abs, "max_rel": report.max_rel,
            "cases": [vars(e) for e in report.errors], "skipped": report.skipped,
        },
        "seconds": {**result.seconds, "total": elapsed},
    }


def print_summary(console: Console, result: ExportResult, elapsed: float) -> None:
    spec = result.spec
    console.print(
        f"[bold]Wrote[/] {result.path} ({human_size(result.size_bytes)}, {spec.kind} graph, {spec.precision}, opset {result.opset}"
        f"{', fused PolyAggregate ops' if spec.fused_ops else ''})"
    )
    for layer in spec.decomposed_layers:  # --fused-ops: the layers the op does not cover
        console.print(f"[yellow]not fused[/] PoM layer {layer['module'] or '(the exported layer)'}: {layer['reason']}")
    io = Table(title="Graph inputs and outputs", title_justify="left")
    for column in ("", "name", "shape", "dtype"):
        io.add_column(column)
    for kind, tensors in (("in", spec.inputs), ("out", spec.outputs)):
        for t in tensors:
            io.add_row(kind, t.name, shape_text(t.shape), t.dtype)
    console.print(io)
    report = result.verification
    if report is not None:
        table = Table(title=f"onnxruntime vs PyTorch (atol {report.atol:g}, rtol {report.rtol:g})", title_justify="left")
        for column in ("inputs", "output", "max abs", "of scale", "max rel", ""):
            table.add_column(column)
        for e in report.errors:
            verdict = "[green]ok[/]" if e.passed else f"[red]FAIL[/]{f' ({e.nonfinite:,} NaN/Inf)' if e.nonfinite else ''}"
            table.add_row(e.case, e.name, f"{e.max_absdiff:.2e}", f"{e.error_to_scale:.2e}", f"{e.max_reldiff:.2e}", verdict)
        console.print(table)
        for skipped in report.skipped:
            console.print(f"[yellow]not verified[/] {skipped}")
    else:
        console.print("[yellow]not verified[/] (--no-verify)")
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    console.print(f"Done in {elapsed:.1f}s ({steps})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: export_command(args))


if __name__ == "__main__":
    sys.exit(main())
