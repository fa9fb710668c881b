"""``pom-deploy``: inspect, run and deploy exported PoM graphs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import ExportError, ModelLoadError, RuntimeInputError, first_line
from . import tensorrt_commands
from . import serving_commands
from ..outputs import atomic_output, check_output_path
from .common import human_size, run_command, shape_text, stderr_console, version_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pom-deploy",
        description="Inspect, run and deploy PoM graphs exported by pom-export.",
        epilog="Start with `pom-deploy demo`: it builds a small model, exports, verifies and runs it.",
    )
    parser.add_argument("--version", action="version", version=version_text("pom-deploy"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser("demo", help="export, verify and run a built-in example model end to end",
                               description="Create a small block-causal video PoM model (fixed seed), save it as model.pt, "
                                           "export it with pom-export (full and step graphs), verify, and time PyTorch vs onnxruntime.")
    demo.add_argument("--dir", type=Path, default=Path("pom-demo"), help="folder to write into (default ./pom-demo)")
    demo.add_argument("--force", action="store_true", help="overwrite files of an earlier demo in that folder")
    demo.set_defaults(func=demo_command)

    inspect = commands.add_parser("inspect", help="show an ONNX file's inputs, outputs, dims, opset and pom-deploy metadata",
                                  description="Show inputs, outputs, symbolic dims, opset, pom-deploy metadata and parameter count.")
    inspect.add_argument("model", type=Path, help="ONNX file")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    inspect.set_defaults(func=inspect_command)

    run = commands.add_parser("run", help="stream a file of tokens through a step graph, chunk by chunk",
                              description="Stream INPUT (.npy, (batch, tokens, dim) or (tokens, dim)) through a step graph "
                                          "(pom-export --step), carrying each layer's state between chunks.")
    run.add_argument("model", type=Path, help="step graph (.onnx) or TensorRT engine")
    run.add_argument("--input", type=Path, required=True, help=".npy file of tokens")
    run.add_argument("--chunk", type=int, help="tokens per step (default: the model's frame size, else the graph's typical chunk)")
    run.add_argument("-o", "--output", type=Path, help="write the outputs here (.npy)")
    run.add_argument("--device", help="cpu, cuda or tensorrt (default: best available)")
    run.add_argument("--force", action="store_true", help="overwrite an existing output")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress")
    run.set_defaults(func=run_command_)

    tensorrt_commands.register(commands)
    serving_commands.register(commands)
    return parser


# --- inspect -----------------------------------------------------------------------------

def inspect_model(path: Path) -> dict:
    """What `inspect` shows, as data."""
    import onnx

    from ..runtime.onnxrt import read_spec

    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not an ONNX file ({first_line(exc)})") from None
    graph = model.graph

    def tensor(value):
        t = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": value.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"}

    initializer_names = {i.name for i in graph.initializer}
    inputs = [tensor(v) for v in graph.input if v.name not in initializer_names]
    outputs = [tensor(v) for v in graph.output]
    symbolic = sorted({d for t in inputs + outputs for d in t["shape"] if isinstance(d, str)})
    params = sum(int(np.prod(i.dims)) for i in graph.initializer)
    spec = read_spec(path)
    return {
        "path": str(path), "size_bytes": path.stat().st_size, "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": inputs, "outputs": outputs, "symbolic_dims": symbolic, "parameters": params,
        "custom_nodes": sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")}),
        "local_functions": sorted({f"{f.domain}::{f.name}[{f.overload}]" for f in model.functions}),
        "pom_deploy": None if spec is None else json.loads(spec.to_json()),
    }


def inspect_command(args) -> int:
    info = inspect_model(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = Console()
    console.print(f"[bold]{info['path']}[/] ({human_size(info['size_bytes'])}), IR {info['ir_version']}, opsets "
                  + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()) + f", {info['parameters']:,} parameters")
    table = Table(title="Inputs and outputs", title_justify="left")
    for column in ("", "name", "shape", "dtype"):
        table.add_column(column)
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            table.add_row(kind[:-1], t["name"], shape_text(t["shape"]), t["dtype"])
    console.print(table)
    console.print("Symbolic dims: " + (", ".join(info["symbolic_dims"]) or "none"))
    if info["custom_nodes"]:
        console.print("Custom ops: " + ", ".join(info["custom_nodes"]) + "; local functions: " + (", ".join(info["local_functions"]) or "none"))
    meta = info["pom_deploy"]
    if meta is None:
        console.print("No pom-deploy metadata (not exported by pom-export).")
        return 0
    arch = meta["architecture"]
    console.print(f"pom-deploy {meta['pom_deploy_version']}: {meta['kind']} graph, {meta['dtype']}, "
                  f"architecture {arch['name'] + ' ' + json.dumps(arch['config']) if arch else 'custom'}, weights {meta['model_digest']}")
    if meta["state"]:
        state = Table(title="Streaming state (zero at the start of a stream)", title_justify="left")
        for column in ("layer", "module", "past (in)", "present (out)", "mean shape"):
            state.add_column(column)
        for s in meta["state"]:
            state.add_row(str(s["index"]), s["module"] or "(the model)", f"{s['past_mean']}, {s['past_count']}",
                          f"{s['present_mean']}, {s['present_count']}", f"(batch, 1, {s['channels']}) float32; count (batch,) int64")
        console.print(state)
    ranges = [(t["name"], t["min_shape"], t["opt_shape"], t["max_shape"]) for t in meta["inputs"] if t.get("min_shape")]
    if ranges:
        profile = Table(title="Supported shape ranges (default TensorRT profile)", title_justify="left")
        for column in ("input", "min", "opt", "max"):
            profile.add_column(column)
        for name, *shapes in ranges:
            profile.add_row(name, *(shape_text(s) for s in shapes))
        console.print(profile)
    return 0


# --- run ---------------------------------------------------------------------------------

def run_command_(args) -> int:
    from ..runtime import StreamingSession, load

    if args.chunk is not None and args.chunk < 1:
        raise RuntimeInputError(f"--chunk must be >= 1, got {args.chunk}")
    if args.output:
        check_output_path(args.output, args.force, RuntimeInputError)
    session = load(args.model, device=args.device)
    if not isinstance(session, StreamingSession):
        raise RuntimeInputError(f"{args.model} is a full graph; `run` streams through step graphs (pom-export --step)")
    tokens = _read_tokens(args.input, session)
    chunk = args.chunk or _default_chunk(session)
    total = tokens.shape[1]
    console = stderr_console(args.quiet)
    outputs = []
    start = time.perf_counter()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("tokens"), TimeRemainingColumn(), console=console, disable=args.quiet) as progress:
        task = progress.add_task(f"Streaming {args.input.name}", total=total)
        for begin in range(0, total, chunk):
            outputs.append(session.step(tokens[:, begin:begin + chunk]))
            progress.update(task, completed=min(total, begin + chunk))
    elapsed = time.perf_counter() - start
    result = np.concatenate(outputs, axis=1)
    steps = len(outputs)
    console.print(f"{steps} steps of up to {chunk} tokens, batch {tokens.shape[0]}: {elapsed:.2f}s "
                  f"({1000 * elapsed / steps:.2f} ms/step) on {session.backend.name}")
    if args.output:
        with atomic_output(args.output) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, result)
        console.print(f"Wrote {args.output} {tuple(result.shape)} {result.dtype}")
    return 0


def _read_tokens(path: Path, session) -> np.ndarray:
    try:
        tokens = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RuntimeInputError(f"{path}: no such file") from None
    except Exception as exc:
        raise RuntimeInputError(f"{path} is not a .npy array ({first_line(exc)})") from None
    spec = session.chunk_input
    if tokens.ndim == len(spec.shape) - 1:
        tokens = tokens[None]
    if tokens.ndim != len(spec.shape):
        raise RuntimeInputError(f"{path} has shape {tokens.shape}; the graph streams {spec.name} {shape_text(spec.shape)}")
    if str(tokens.dtype) != spec.dtype:
        tokens = tokens.astype(spec.dtype) if np.issubdtype(tokens.dtype, np.floating) else tokens
    return tokens


def _default_chunk(session) -> int:
    arch = session.spec.architecture
    if arch and "frame_tokens" in arch["config"]:
        return int(arch["config"]["frame_tokens"])
    opt = session.chunk_input.opt_shape
    return int(opt[1]) if opt else 64


# --- demo --------------------------------------------------------------------------------

def demo_command(args) -> int:
    from .. import save_checkpoint
    from ..models.zoo import create_zoo_model
    from . import export as export_cli

    console = Console()
    folder: Path = args.dir
    folder.mkdir(parents=True, exist_ok=True)
    model_path, onnx_path, step_path = folder / "model.pt", folder / "model.onnx", folder / "model.step.onnx"
    for path in (model_path, onnx_path, step_path):
        check_output_path(path, args.force, ExportError)
    model = create_zoo_model("video_pom", seed=0)
    save_checkpoint(model, model_path)
    console.print(f"[bold]1.[/] Saved a block-causal video PoM model ({sum(p.numel() for p in model.parameters()):,} parameters, "
                  f"frames of {model.frame_tokens} tokens) to {model_path}")
    for number, extra, path in ((2, [], onnx_path), (3, ["--step"], step_path)):
        argv = [str(model_path), "--onnx", "-o", str(path), *extra, *(["--force"] if args.force else [])]
        console.print(f"[bold]{number}.[/] pom-export {' '.join(argv)}")
        code = export_cli.main(argv)
        if code:
            return code
    console.print("[bold]4.[/] Running both graphs in onnxruntime next to PyTorch on the same inputs")
    _demo_timings(console, model, onnx_path, step_path)
    console.print(f"\nNext: `pom-deploy inspect {onnx_path}`, or stream a file with `pom-deploy run {step_path} --input tokens.npy`.")
    return 0


def _demo_timings(console: Console, model, onnx_path: Path, step_path: Path) -> None:
    import torch

    from ..runtime import load

    tokens = torch.randn(1, 64 * model.frame_tokens, model.in_proj.in_features, generator=torch.Generator().manual_seed(1))
    full, stream = load(onnx_path, device="cpu"), load(step_path, device="cpu")
    with torch.no_grad():
        expected = model(tokens).numpy()
    torch_ms = _median_ms(lambda: model(tokens))
    ort_ms = _median_ms(lambda: full.run(tokens=tokens.numpy()))
    actual = full.run(tokens=tokens.numpy())["output"]

    frames = tokens.numpy().reshape(1, -1, model.frame_tokens, tokens.shape[-1])

    def stream_all():
        stream.reset()
        return np.concatenate([stream.step(frames[:, f]) for f in range(frames.shape[1])], axis=1)

    streamed = stream_all()
    stream_ms = _median_ms(stream_all, repeat=3)
    table = Table(title=f"{tokens.shape[1]} tokens ({frames.shape[1]} frames), batch 1, CPU", title_justify="left")
    for column in ("run", "median ms", "max abs error vs PyTorch"):
        table.add_column(column)
    with torch.no_grad():
        table.add_row("PyTorch eager, full sequence", f"{torch_ms:.2f}", "-")
    table.add_row("onnxruntime, full graph", f"{ort_ms:.2f}", f"{np.abs(actual - expected).max():.2e}")
    table.add_row(f"onnxruntime, step graph, {frames.shape[1]} steps", f"{stream_ms:.2f}", f"{np.abs(streamed - expected).max():.2e}")
    console.print(table)
    console.print(f"onnxruntime is {torch_ms / ort_ms:.2f}x the speed of PyTorch eager here (timings vary with the machine).")


def _median_ms(func, repeat: int = 7) -> float:
    import torch

    with torch.no_grad():
        func()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            func()
            times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
