"""onnxruntime's PolyAggregate custom-op library (plugins/poly_aggregate/onnxruntime): where it is
looked for, and how a session takes it.

A graph exported with fused ops carries each ``PolyAggregate`` node's decomposed ops as a
model-local function, which onnxruntime inlines: eight passes over the (B, N, C) features. A
session that registers this library runs each node as one CPU kernel instead (one pass;
docs/benchmarks.md, section 6). Building it needs onnxruntime's C API header, so it is optional
(``pom-deploy build-ops``): without it the graph runs as before, and the runtime says once how to
get the kernel (``pom_deploy.runtime.onnxrt``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError, first_line
from .native_libraries import SEARCH_OFF, find_library, onnxruntime_problem

ORT_OPS_ENV = "POM_DEPLOY_ORT_OPS"
LIBRARY_NAME = "libpom_deploy_ort_ops.so"
ORT_OPS_OFF = SEARCH_OFF  # $POM_DEPLOY_ORT_OPS=none: never look for the library


def find_ort_ops_library(explicit: str | Path | None = None) -> Path | None:
    """The library: ``explicit`` (must exist), else the first one found by the rule of
    ``pom_deploy.ops.native_libraries`` ($POM_DEPLOY_ORT_OPS first), else None."""
    return find_library(explicit, ORT_OPS_ENV, (LIBRARY_NAME,), "onnxruntime custom-op library", ModelLoadError)


def register_ort_ops(options, library: str | Path | None = None) -> Path | None:
    """Register the library (``library``, else the one found) with onnxruntime ``SessionOptions``;
    the library registered, or None when there is none. A library built for a newer onnxruntime C
    API than the installed one, or one onnxruntime refuses (not this library), is one
    ``ModelLoadError`` line."""
    import onnxruntime

    path = find_ort_ops_library(library)
    if path is None:
        return None
    how = "pass another" if library is not None else f"set ${ORT_OPS_ENV} to another or to {ORT_OPS_OFF!r}"
    problem = onnxruntime_problem(path, onnxruntime.__version__)
    if problem is not None:
        raise ModelLoadError(f"{problem} ({how}, or open the model with ort_ops=False)")
    try:
        options.register_custom_ops_library(str(path))
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load the custom-op library {path}: {first_line(exc)} "
                             f"({how}, or open the model with ort_ops=False)") from None
    return path
