"""``pom-deploy demo``: build a small model, export it (full and step graphs, each verified)
through the Python API, and time PyTorch against onnxruntime on the same inputs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..errors import ExportError
from ..exporters import export_onnx
from ..loading import save_checkpoint
from ..models.zoo import create_zoo_model
from ..outputs import check_output_path
from ..runtime import load
from .export import print_summary


def register(commands) -> None:
    demo = commands.add_parser("demo", help="export, verify and run a built-in example model end to end",
                               description="Create a small block-causal video PoM model (fixed seed), save it as model.pt, "
                                           "export it as pom-export does (full and step graphs), verify, and time PyTorch vs onnxruntime.")
    demo.add_argument("--dir", type=Path, default=Path("pom-demo"), help="folder to write into (default ./pom-demo)")
    demo.add_argument("--force", action="store_true", help="overwrite files of an earlier demo in that folder")
    demo.set_defaults(func=demo_command)


def demo_command(args) -> int:
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
    for number, step, path in ((2, False, onnx_path), (3, True, step_path)):
        argv = [str(model_path), "--onnx", "-o", str(path), *(["--step"] if step else []), *(["--force"] if args.force else [])]
        console.print(f"[bold]{number}.[/] Export, as `pom-export {' '.join(argv)}` does")
        start = time.perf_counter()
        result = export_onnx(model_path, path, step=step, force=args.force)
        print_summary(console, result, time.perf_counter() - start)
    console.print("[bold]4.[/] Running both graphs in onnxruntime next to PyTorch on the same inputs")
    _demo_timings(console, model, onnx_path, step_path)
    console.print(f"\nNext: `pom-deploy inspect {onnx_path}`, or stream a file with `pom-deploy run {step_path} --input tokens.npy`.")
    return 0


def _demo_timings(console: Console, model, onnx_path: Path, step_path: Path) -> None:
    import torch

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


