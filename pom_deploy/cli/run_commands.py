"""``pom-deploy run``: stream a file of tokens through a step graph, chunk by chunk."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import RuntimeInputError, first_line
from ..outputs import atomic_output, check_output_path
from ..runtime import StreamingSession, load
from ..spec import shape_text
from .common import stderr_console


def register(commands) -> None:
    run = commands.add_parser(
        "run",
        help="stream a file of tokens through a step graph, chunk by chunk",
        description="Stream INPUT (.npy, (batch, tokens, dim) or (tokens, dim); int token ids (batch, tokens) or (tokens,) "
        "for a token LM) through a step graph "
        "(pom-export --step), carrying each layer's state between chunks.",
    )
    run.add_argument("model", type=Path, help="step graph (.onnx) or TensorRT engine")
    run.add_argument("--input", type=Path, required=True, help=".npy file of tokens")
    run.add_argument("--chunk", type=int, help="tokens per step, whole frames for a block-causal model "
                                                "(default: one frame, else the graph's typical chunk)")
    run.add_argument("-o", "--output", type=Path, help="write the outputs here (.npy)")
    run.add_argument("--device", help="cpu, cuda or tensorrt (default: best available)")
    run.add_argument("--require-ops", action="store_true",
                     help="fail unless a fused graph's PolyAggregate nodes run on the CPU kernel (pom-deploy build-ops builds it)")
    run.add_argument("--force", action="store_true", help="overwrite an existing output")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress")
    run.set_defaults(func=run_command)


def run_command(args) -> int:
    if args.chunk is not None and args.chunk < 1:
        raise RuntimeInputError(f"--chunk must be >= 1, got {args.chunk}")
    if args.output:
        check_output_path(args.output, args.force, RuntimeInputError)
    onnx_options = {"ort_ops": True} if args.require_ops and args.model.suffix == ".onnx" else {}  # engines carry their plugin
    session = load(args.model, device=args.device, **onnx_options)
    if not isinstance(session, StreamingSession):
        raise RuntimeInputError(f"{args.model} is a full graph; `run` streams through step graphs (pom-export --step)")
    tokens = _read_tokens(args.input, session)
    chunk = args.chunk or _default_chunk(session)
    total = tokens.shape[1]
    frame = session.chunk_multiple
    if chunk % frame or total % frame:
        what = f"--chunk {chunk}" if chunk % frame else f"{args.input} holds {total} tokens, which"
        raise RuntimeInputError(f"{what} splits a frame: this model streams whole frames of {frame} tokens")
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
    if 0 in tokens.shape:
        raise RuntimeInputError(f"{path} has shape {tokens.shape}: no tokens to stream")
    integer_graph = spec.dtype.startswith(("int", "uint"))
    if str(tokens.dtype) != spec.dtype and np.issubdtype(tokens.dtype, np.integer if integer_graph else np.floating):
        tokens = tokens.astype(spec.dtype)  # int32 token ids for an int64 graph, float64 for float32; other kinds are refused
    return tokens


def _default_chunk(session) -> int:
    """One frame of a block-causal model, else the model's own frame size, else the typical chunk."""
    if session.chunk_multiple > 1:
        return session.chunk_multiple
    arch = session.spec.architecture
    if arch and "frame_tokens" in arch["config"]:
        return int(arch["config"]["frame_tokens"])
    opt = session.chunk_input.opt_shape
    return int(opt[1]) if opt else 64


