"""``build_engine``: ONNX -> TensorRT engine through Polygraphy's TensorRT backend.

The build is planned first (``plan_build``: files, profiles, precision, plugin), which is pure
Python and runs without TensorRT; then ``build_engine`` hands the plan to Polygraphy
(``NetworkFromOnnxPath`` -> ``CreateConfig`` with ``Profile``s -> ``EngineBytesFromNetwork`` ->
``SaveBytes``, as Polygraphy's own ``convert`` does) and writes the engine and its sidecar
atomically. The serialized engine is written as built, never deserialized here: that would hold
the engine twice (Jetson's memory is shared with the GPU) and, for a version-compatible engine,
load its embedded plugin copy beside the registered one; TensorRT 11 builds such engines only
with ``buildSerializedNetwork``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ..dtypes import FLOAT_TYPES, PRECISIONS, lookup
from ..errors import ModelLoadError, PomDeployError, first_line
from ..onnx_graph import graph_tensors, spec_of
from ..outputs import atomic_output, check_output_path
from ..spec import GraphSpec
from .environment import current_environment, require_tensorrt, version_tuple
from .plugins import (
    find_plugin_library, fused_nodes, inline_function_bodies, load_plugin_library, must_strip_function, strip_local_function,
)
from .profiles import Profile, ShapeRange, derive_profiles, profiles_to_json
from .sidecar import make_sidecar, sidecar_path, write_json_atomic

HARDWARE_COMPATIBILITY = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
WEAK_TYPING_REMOVED = (11,)


class EngineBuildError(PomDeployError):
    """An engine cannot be built (bad option, unsupported graph, TensorRT build failure)."""


@dataclass
class BuildOptions:
    """Everything ``build-engine`` accepts besides the paths."""

    precision: str = "fp32"
    strongly_typed: bool | None = None  # None: when the ONNX carries fp16/bf16 types (always on TensorRT 11)
    profiles: list[dict[str, ShapeRange]] | None = None  # overrides, one dict per profile
    plugin: str | Path | bool | None = None  # None: auto (use it if found), False: never, path: that library
    workspace: int | None = None  # bytes
    hardware_compatibility: str | None = None  # "ampere+" / "same-cc"
    version_compatible: bool = False
    dla_core: int | None = None
    optimization_level: int | None = None
    timing_cache: str | Path | None = None
    force: bool = False


@dataclass
class BuildPlan:
    onnx_path: Path
    output: Path
    spec: GraphSpec | None
    profiles: list[Profile]
    graph_precision: str  # float type the ONNX carries: fp32 / fp16 / bf16
    fused_nodes: int
    plugin_library: Path | None  # None: build with the function body (unfused)
    options: BuildOptions


@dataclass
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)


def parse_size(text: str | int) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"1048576"`` -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise EngineBuildError(f"bad size {text!r}; write e.g. 512M or 2G")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if value < 1:
        raise EngineBuildError(f"size {text!r} must be at least 1 byte")
    return int(value)


def graph_precision(model: onnx.ModelProto, spec: GraphSpec | None) -> str:
    """The float precision the graph carries: the metadata's, else the narrowest float input's."""
    if spec is not None and spec.precision in PRECISIONS:
        return spec.precision
    types = {t.precision for v in model.graph.input if (t := lookup("onnx", v.type.tensor_type.elem_type)) in FLOAT_TYPES}
    return next((p for p in ("bf16", "fp16") if p in types), "fp32")


def resolve_typing(precision: str, graph: str, strongly_typed: bool | None, tensorrt_version: str) -> tuple[bool, str | None]:
    """``(strongly_typed, builder_flag)`` for a requested precision on a TensorRT version.

    TensorRT 11 has no weak typing: precision must come from the ONNX types. On 10.x a graph
    that carries fp16/bf16 is built strongly typed; an fp32 graph with ``--fp16``/``--bf16``
    gets the builder flag (TensorRT may then run layers in that precision).
    """
    if precision not in PRECISIONS:
        raise EngineBuildError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    trt11 = version_tuple(tensorrt_version)[:1] >= WEAK_TYPING_REMOVED
    strong = True if trt11 else (strongly_typed if strongly_typed is not None else graph != "fp32")
    if strong:
        if precision not in ("fp32", graph):
            why = f"TensorRT {tensorrt_version} builds strongly typed networks only" if trt11 else "a strongly typed build"
            raise EngineBuildError(
                f"--{precision}: {why}, so the precision comes from the ONNX types and this ONNX is {graph}; "
                f"export the model in {precision} (the ONNX then carries the types), or build it on TensorRT 10.x"
            )
        return True, None
    return False, (None if precision == "fp32" else precision)


def plan_build(onnx_path: str | Path, output: str | Path | None = None, options: BuildOptions | None = None) -> BuildPlan:
    """Check the inputs and options and work out profiles and plugin use; no TensorRT needed."""
    options = options or BuildOptions()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: no such file")
    output = Path(output) if output is not None else onnx_path.with_suffix(".engine")
    check_output_path(output, options.force, EngineBuildError)
    if options.precision not in PRECISIONS:
        raise EngineBuildError(f"unknown precision {options.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if options.hardware_compatibility is not None and options.hardware_compatibility not in HARDWARE_COMPATIBILITY:
        raise EngineBuildError(f"--hardware-compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}")
    if options.optimization_level is not None and not 0 <= options.optimization_level <= 5:
        raise EngineBuildError("--optimization-level must be 0..5")
    if options.dla_core is not None:
        if options.dla_core < 0:
            raise EngineBuildError("--dla-core must be >= 0")
        if options.precision == "fp32":
            raise EngineBuildError("--dla-core: DLA runs fp16 (or int8) only; add --fp16 (layers DLA lacks fall back to the GPU)")
        if options.hardware_compatibility or options.version_compatible:
            raise EngineBuildError("--dla-core cannot be combined with --hardware-compatibility/--version-compatible")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{onnx_path} is not a valid ONNX model: {first_line(exc)}") from None
    spec = spec_of(model)
    profiles = derive_profiles(spec.inputs if spec is not None else graph_tensors(model)[0], options.profiles)
    nodes = fused_nodes(model)
    plugin = None
    if options.plugin is not False and (nodes or options.plugin not in (None, True)):
        plugin = find_plugin_library(None if options.plugin in (None, True) else options.plugin)
        if plugin is None and options.plugin is True:
            raise EngineBuildError("--plugin: no pom plugin library found (set POM_DEPLOY_PLUGIN or pass its path)")
    return BuildPlan(onnx_path, output, spec, profiles, graph_precision(model, spec), nodes, plugin, options)


def build_engine(onnx_path: str | Path, output: str | Path | None = None, options: BuildOptions | None = None,
                 console=None, verbose: bool = False, **kwargs) -> BuildResult:
    """Build ``output`` (default: the ONNX path with ``.engine``) and its ``.engine.json`` sidecar.

    ``kwargs`` are ``BuildOptions`` fields, for ``build_engine("m.onnx", "m.engine", precision="fp16")``.
    """
    if options is None:
        options = BuildOptions(**kwargs)
    elif kwargs:
        raise TypeError("pass either options or keyword options, not both")
    plan = plan_build(onnx_path, output, options)
    trt = require_tensorrt()
    start = time.perf_counter()
    environment = current_environment()
    strong, flag = resolve_typing(options.precision, plan.graph_precision, options.strongly_typed, trt.__version__)
    warnings = []
    strip = must_strip_function(trt.__version__, plan.plugin_library is not None and plan.fused_nodes > 0)
    inline = plan.plugin_library is None and plan.fused_nodes > 0
    plugin_info: dict[str, Any] = {"fused_nodes": plan.fused_nodes, "library": None, "loaded_by": None, "function_stripped": strip,
                                   "function_bodies_inlined": inline}
    if plan.plugin_library is not None:
        plugin_info["loaded_by"] = load_plugin_library(plan.plugin_library, trt)
        plugin_info["library"] = str(plan.plugin_library.resolve())
    elif plan.fused_nodes:
        warnings.append(f"{plan.fused_nodes} PolyAggregate node(s) built from their ONNX function body (unfused): "
                        "no pom plugin library found (pass --plugin or set POM_DEPLOY_PLUGIN)")

    sidecar = make_sidecar(
        environment=environment, precision=plan.graph_precision if strong else options.precision,
        strongly_typed=strong, profiles=profiles_to_json(plan.profiles), spec=plan.spec,
        source_onnx={"path": str(plan.onnx_path), "sha256": _sha256(plan.onnx_path)}, plugin=plugin_info,
        options={"workspace": options.workspace, "hardware_compatibility": options.hardware_compatibility,
                 "version_compatible": options.version_compatible, "dla_core": options.dla_core,
                 "optimization_level": options.optimization_level,
                 "timing_cache": str(options.timing_cache) if options.timing_cache else None},
    )
    side = sidecar_path(plan.output)
    # Both files appear only once the build succeeded (the sidecar first, then the engine).
    with atomic_output(plan.output) as engine_tmp:
        with _parse_source(plan.onnx_path, strip, inline) as parse_path, _quiet_polygraphy(verbose):
            _build_with_polygraphy(plan, parse_path, engine_tmp, strong, flag, trt)
        write_json_atomic(side, sidecar)
    return BuildResult(plan.output, side, sidecar, time.perf_counter() - start, warnings)


@contextlib.contextmanager
def _parse_source(onnx_path: Path, strip: bool, inline: bool):
    """The path to parse: the source, or a copy written next to it (so that external weights
    still resolve) without the model-local functions (``strip``: TensorRT < 10.7 with the plugin)
    or with them inlined (``inline``: built from the bodies, which the parser would confuse)."""
    if not (strip or inline):
        yield str(onnx_path)
        return
    model = onnx.load(str(onnx_path), load_external_data=False)
    if strip:
        strip_local_function(model)
    else:
        model = inline_function_bodies(model)
    fd, tmp = tempfile.mkstemp(prefix=f".{onnx_path.stem}.", suffix=".plugin.onnx", dir=onnx_path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)


def _build_with_polygraphy(plan: BuildPlan, parse_path: str, destination: Path, strong: bool, flag: str | None, trt) -> None:
    from polygraphy.backend.common import SaveBytes
    from polygraphy.backend.trt import (
        CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessConfig, Profile,
    )
    from polygraphy.exception import PolygraphyException

    options = plan.options
    trt_profiles = []
    for profile in plan.profiles:
        p = Profile()
        for name, rng in profile.items():
            p.add(name, min=list(rng.min), opt=list(rng.opt), max=list(rng.max))
        trt_profiles.append(p)
    config_kwargs: dict[str, Any] = dict(profiles=trt_profiles, fp16=flag == "fp16" or None, bf16=flag == "bf16" or None)
    if options.workspace:
        config_kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: options.workspace}
    if options.hardware_compatibility:
        level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[options.hardware_compatibility], None)
        if level is None:
            raise EngineBuildError(f"--hardware-compatibility {options.hardware_compatibility} "
                                   f"needs a newer TensorRT than {trt.__version__}")
        config_kwargs["hardware_compatibility_level"] = level
    if options.version_compatible:
        config_kwargs["version_compatible"] = True
    if options.optimization_level is not None:
        config_kwargs["builder_optimization_level"] = options.optimization_level
    if options.timing_cache:
        config_kwargs["load_timing_cache"] = str(options.timing_cache)
    if options.dla_core is not None:
        config_kwargs.update(use_dla=True, allow_gpu_fallback=True)
    config = CreateConfig(**{k: v for k, v in config_kwargs.items() if v is not None})

    library = plan.plugin_library

    def finish_config(builder, network, cfg):
        if options.dla_core is not None:
            if options.dla_core >= builder.num_DLA_cores:
                raise EngineBuildError(f"--dla-core {options.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
            cfg.DLA_core = options.dla_core
        if options.version_compatible and library is not None:
            cfg.plugins_to_serialize = [str(library.resolve())]  # the engine carries the plugin

    network = NetworkFromOnnxPath(parse_path, strongly_typed=strong or None)
    engine_bytes = EngineBytesFromNetwork(network, config=PostprocessConfig(config, finish_config),
                                          save_timing_cache=str(options.timing_cache) if options.timing_cache else None)
    try:
        SaveBytes(engine_bytes, str(destination))()
    except PolygraphyException as exc:
        raise EngineBuildError(f"TensorRT could not build {plan.onnx_path}: {_last_line(exc)}") from None


@contextlib.contextmanager
def _quiet_polygraphy(verbose: bool):
    from polygraphy.logger import G_LOGGER

    before = G_LOGGER.module_severity
    if not verbose:
        G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.module_severity = before


def _last_line(exc: BaseException) -> str:
    """TensorRT and Polygraphy put the summary of an error on its last line."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
