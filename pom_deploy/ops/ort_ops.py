"""onnxruntime's PolyAggregate custom-op library (plugins/ort_ops): where it is looked for, and
how a session takes it.

A graph exported with fused ops carries each ``PolyAggregate`` node's decomposed ops as a
model-local function, which onnxruntime inlines: eight passes over the (B, N, C) features. A
session that registers this library runs each node as one CPU kernel instead (one pass;
docs/benchmarks.md, section 6). Building it needs onnxruntime's C API header
(plugins/poly_aggregate/README.md), so it is optional: without it the graph runs as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelLoadError, first_line

ORT_OPS_ENV = "POM_DEPLOY_ORT_OPS"
LIBRARY_NAME = "libpom_deploy_ort_ops.so"


ORT_OPS_OFF = "none"  # $POM_DEPLOY_ORT_OPS=none: never look for the library


def search_paths() -> list[Path]:
    """Where the library is looked for, first match wins: ``$POM_DEPLOY_ORT_OPS`` (files or
    folders, ``os.pathsep``-separated; ``none``: nowhere), next to the package (``pom_deploy/``,
    ``pom_deploy/lib/``) and, in a source checkout, ``build/ort_ops/`` (plugins/ort_ops/CMakeLists.txt's
    documented one). An entry of the variable that does not exist is an error, not skipped: a typo
    would otherwise run without the kernel, or with another build of it."""
    setting = os.environ.get(ORT_OPS_ENV, "")
    if setting.strip().lower() == ORT_OPS_OFF:
        return []
    env = [Path(p) for p in setting.split(os.pathsep) if p]
    missing = [str(p) for p in env if not p.exists()]
    if missing:
        raise ModelLoadError(f"${ORT_OPS_ENV} names {', '.join(missing)}, which does not exist "
                             f"(set it to the library, its folder, or {ORT_OPS_OFF!r})")
    package = Path(__file__).resolve().parent.parent
    return [*env, package, package / "lib", package.parent / "build" / "ort_ops"]


def find_ort_ops_library(explicit: str | Path | None = None) -> Path | None:
    """The library: ``explicit`` (must exist), else the first one on the search path, else None."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ModelLoadError(f"onnxruntime custom-op library {path} not found")
        return path
    for place in search_paths():
        if place.is_file():
            return place
        if (place / LIBRARY_NAME).is_file():
            return place / LIBRARY_NAME
    return None


def register_ort_ops(options, library: str | Path | None = None) -> Path | None:
    """Register the library (``library``, else the one found) with onnxruntime ``SessionOptions``;
    the library registered, or None when there is none. A library onnxruntime refuses (not this
    library, an onnxruntime older than 1.17) is one ``ModelLoadError`` line."""
    path = find_ort_ops_library(library)
    if path is None:
        return None
    try:
        options.register_custom_ops_library(str(path))
    except Exception as exc:
        how = "pass another" if library is not None else f"set ${ORT_OPS_ENV} to another or to {ORT_OPS_OFF!r}"
        raise ModelLoadError(f"onnxruntime cannot load the custom-op library {path}: {first_line(exc)} "
                             f"({how}, or open the model with ort_ops=False)") from None
    return path
