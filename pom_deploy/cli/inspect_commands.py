"""``pom-deploy inspect``: print what ``pom_deploy.runtime.inspect.inspect_model`` finds."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..runtime.inspect import inspect_model
from ..spec import shape_text
from .common import human_size


def register(commands) -> None:
    inspect = commands.add_parser("inspect", help="show an ONNX file's inputs, outputs, dims, opset and pom-deploy metadata",
                                  description="Show inputs, outputs, symbolic dims, opset, pom-deploy metadata and parameter count.")
    inspect.add_argument("model", type=Path, help="ONNX file")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    inspect.set_defaults(func=inspect_command)


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
        console.print("Custom ops: " + ", ".join(info["custom_nodes"])
                      + "; local functions: " + (", ".join(info["local_functions"]) or "none"))
    meta = info["pom_deploy"]
    if meta is None:
        console.print("No pom-deploy metadata (not exported by pom-export).")
        return 0
    arch = meta["architecture"]
    console.print(f"pom-deploy {meta['pom_deploy_version']}: {meta['kind']} graph, {meta['precision']}, "
                  f"architecture {arch['name'] + ' ' + json.dumps(arch['config']) if arch else 'custom'}, weights {meta['model_digest']}")
    if meta["state"]:
        state = Table(title="Streaming state (zero at the start of a stream)", title_justify="left")
        for column in ("layer", "module", "past (in)", "present (out)", "shapes", "within a chunk"):
            state.add_column(column)
        for s in meta["state"]:
            state.add_row(str(s["index"]), s["module"] or "(the model)", f"{s['past_mean']}, {s['past_count']}",
                          f"{s['present_mean']}, {s['present_count']}",
                          f"(batch, 1, {s['channels']}) float32; count {shape_text(s['count_shape'])} int64",
                          s.get("within_chunk", "whole-chunk"))
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
