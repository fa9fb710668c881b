"""What ``pom-deploy inspect`` shows about an ONNX file, as data (the CLI only prints it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import ModelLoadError, first_line
from ..onnx_graph import graph_tensors, spec_of


def inspect_model(path: str | Path) -> dict[str, Any]:
    """Inputs, outputs, symbolic dims, opsets, parameter count, custom ops and local functions,
    and the pom-deploy metadata (None for a foreign file) of an ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not an ONNX file ({first_line(exc)})") from None
    graph = model.graph
    inputs, outputs = ([{"name": t.name, "shape": t.shape, "dtype": t.dtype} for t in tensors] for tensors in graph_tensors(model))
    spec = spec_of(model)
    return {
        "path": str(path), "size_bytes": path.stat().st_size, "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": inputs, "outputs": outputs,
        "symbolic_dims": sorted({d for t in inputs + outputs for d in t["shape"] if isinstance(d, str)}),
        "parameters": sum(int(np.prod(i.dims)) for i in graph.initializer),
        "custom_nodes": sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")}),
        "local_functions": sorted({f"{f.domain}::{f.name}[{f.overload}]" for f in model.functions}),
        "pom_deploy": None if spec is None else json.loads(spec.to_json()),
    }
