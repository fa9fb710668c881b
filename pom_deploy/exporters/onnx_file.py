"""Writing the exported graph: save (weights beside it past protobuf's 2 GB limit) and check."""

from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import ExportError, first_line

EXTERNAL_DATA_THRESHOLD = 2 * 1024**3  # protobuf's limit for one file


def save(program, path: Path) -> str | None:
    """Save; weights go to ``<name>.data`` beside it when the model exceeds 2 GB."""
    size = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None)
    external = size > EXTERNAL_DATA_THRESHOLD
    program.save(str(path), external_data=external)
    if not external:
        return None
    data_files = [p.name for p in path.parent.iterdir() if p.name != path.name]
    return data_files[0] if data_files else None


def check(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {first_line(exc)}") from None
