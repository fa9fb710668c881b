"""Finding and loading the pom TensorRT plugin library, and the model-local function rules.

``PolyAggregate`` nodes (domain ``pom_deploy``) come with model-local ONNX functions of the
same name, their unfused bodies: one overload per configuration (degree, mode, ...). TensorRT's
ONNX parser tries the function before the plugin fallback up to 10.6; from 10.7 a registered
plugin wins. So on older TensorRT (JetPack 6 has 10.3) the functions are removed from the model
before parsing when the plugin is to be used. And the parser keys model-local functions by name
only (onnx-tensorrt's ``ModelImporter``), so it would give every node the first overload: where
TensorRT is to build from the bodies, they are inlined first, each node its own.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import PomDeployError
from ..ops.native_libraries import find_library, tensorrt_problem
from ..ops.poly_aggregate import OP_DOMAIN, OP_TYPE, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from ..runtime.providers import register_plugin_finder
from .environment import version_tuple

PLUGIN_ENV = "POM_DEPLOY_PLUGIN"
LIBRARY_GLOBS = ("libpom_deploy_plugins.so", "libpom_trt_plugin.so", "libpom*plugin*.so")
PLUGIN_WINS_OVER_FUNCTION = (10, 7)


class PluginError(PomDeployError):
    """The plugin library is missing, cannot be loaded, or does not register PolyAggregate."""


def find_plugin_library(explicit: str | Path | None = None) -> Path | None:
    """The plugin library: ``explicit`` (must exist), else the first one found by the rule of
    ``pom_deploy.ops.native_libraries`` ($POM_DEPLOY_PLUGIN first), else None."""
    return find_library(explicit, PLUGIN_ENV, LIBRARY_GLOBS, "plugin library", PluginError)


register_plugin_finder(find_plugin_library)  # onnxruntime's TensorRT EP gets it for fused graphs


def fused_nodes(model: onnx.ModelProto) -> int:
    """How many ``PolyAggregate`` nodes the graph has (subgraphs included)."""

    def count(graph: onnx.GraphProto) -> int:
        total = 0
        for node in graph.node:
            total += node.op_type == OP_TYPE and node.domain == OP_DOMAIN
            for attr in node.attribute:
                total += sum(count(g) for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs))
        return total

    return count(model.graph)


def must_strip_function(tensorrt_version: str, use_plugin: bool) -> bool:
    """Whether the model-local function has to go for the plugin to be used."""
    return use_plugin and version_tuple(tensorrt_version)[:2] < PLUGIN_WINS_OVER_FUNCTION


def strip_local_function(model: onnx.ModelProto) -> bool:
    """Remove the model-local ``PolyAggregate`` function in place; True when there was one."""
    keep = [f for f in model.functions if not (f.name == OP_TYPE and f.domain == OP_DOMAIN)]
    removed = len(keep) != len(model.functions)
    if removed:
        del model.functions[:]
        model.functions.extend(keep)
    return removed


def inline_function_bodies(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every call of a model-local function replaced by that call's own body
    (the ONNX inliner resolves domain, name and overload), for a parser that keys functions by
    name only."""
    from onnx.inliner import inline_local_functions

    return inline_local_functions(model)


def load_plugin_library(path: str | Path, trt) -> str:
    """Load the library so that TensorRT finds ``PolyAggregate``; returns how it was loaded.

    Through the registry's ``load_library`` (``IPluginRegistry::loadLibrary``), the one way the
    pom library hands out its creator (``getCreators``), so that the registry owns it and a
    version-compatible engine's lean runtime can load its embedded copy the same way; only once
    the library's build record says it was built for this TensorRT's major version.
    """
    path = str(Path(path).resolve())
    registry = trt.get_plugin_registry()
    if _registered(registry):
        return "already loaded"
    problem = tensorrt_problem(path, trt.__version__)
    if problem is not None:
        raise PluginError(problem)
    handle = registry.load_library(path)
    if handle is not None and _registered(registry):
        return "load_library"
    raise PluginError(
        f"{path} loaded but registers no {PLUGIN_NAME} plugin (version {PLUGIN_VERSION}, namespace {PLUGIN_NAMESPACE!r}); "
        "is it the pom plugin library built with TensorRT's headers (cmake -DPOM_WITH_TENSORRT=ON) for this TensorRT, "
        "and are its CUDA runtime and TensorRT versions the ones installed here?"
    )


def _registered(registry) -> bool:
    try:
        return registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None
    except Exception:
        pass
    try:  # older bindings: look through the list of (V2) creators
        return any(c.name == PLUGIN_NAME and c.plugin_namespace == PLUGIN_NAMESPACE for c in registry.plugin_creator_list)
    except Exception:
        return False
