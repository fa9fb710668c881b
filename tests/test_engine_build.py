"""build-engine / compare / TensorRTBackend on machines without TensorRT: planning, option
checks, plugin discovery, the model-local function rule, the comparison, and the one-line
errors. Uses tiny ONNX files made here with pom-deploy metadata (no exporter needed)."""

import argparse
import os
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pom_deploy.tensorrt.cli import build_options, register, report_table
from pom_deploy.ops import native_libraries
from pom_deploy.tensorrt.build import (
    BuildOptions, EngineBuildError, build_engine, graph_precision, parse_size, plan_build, resolve_typing,
)
from pom_deploy.comparator import ComparisonError, compare_outputs
from pom_deploy.runtime.compare import compare_backends, example_feeds
from pom_deploy.tensorrt.environment import INSTALL_HINT, tensorrt_available
from pom_deploy.tensorrt.plugins import (
    PLUGIN_ENV, PluginError, find_plugin_library, fused_nodes, must_strip_function, strip_local_function,
)
from pom_deploy.tensorrt.profiles import ProfileError, ShapeRange, opt_shapes
from pom_deploy.errors import BackendUnavailableError, ModelLoadError
from pom_deploy.ops.poly_aggregate import OP_DOMAIN, OP_TYPE
from pom_deploy.runtime.onnxrt import OnnxRuntimeBackend
from pom_deploy.tensorrt.backend import TensorRTBackend
from pom_deploy.dtypes import by_name
from pom_deploy.onnx_graph import spec_of
from pom_deploy.spec import METADATA_KEY, GraphSpec, TensorSpec

no_tensorrt = pytest.mark.skipif(tensorrt_available(), reason="checks the behaviour without TensorRT")


def tiny_onnx(path, fused=False, dtype="float32"):
    """y = x + x, and with ``fused`` a PolyAggregate node (body: a model-local function)."""
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    x = helper.make_tensor_value_info("x", elem, ["batch", "tokens", 16])
    y = helper.make_tensor_value_info("y", elem, ["batch", "tokens", 16])
    nodes = [helper.make_node("Add", ["x", "x"], ["h" if fused else "y"])]
    functions = []
    opsets = [helper.make_opsetid("", 18)]
    if fused:
        nodes.append(helper.make_node(OP_TYPE, ["h"], ["y"], domain=OP_DOMAIN, variant="v2", degree=2, mode="causal",
                                      plugin_version="1", plugin_namespace=OP_DOMAIN))
        functions.append(helper.make_function(OP_DOMAIN, OP_TYPE, ["X"], ["Y"], [helper.make_node("Identity", ["X"], ["Y"])],
                                              [helper.make_opsetid("", 18)],
                                              attributes=["variant", "degree", "mode", "plugin_version", "plugin_namespace"]))
        opsets.append(helper.make_opsetid(OP_DOMAIN, 1))
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y]), opset_imports=opsets, functions=functions)
    model.ir_version = 9
    spec = GraphSpec(kind="full", precision=by_name(dtype).precision, fused_ops=fused,
                     inputs=[TensorSpec("x", ["batch", "tokens", 16], dtype, [1, 1, 16], [1, 32, 16], [2, 128, 16])],
                     outputs=[TensorSpec("y", ["batch", "tokens", 16], dtype)])
    helper.set_model_props(model, {METADATA_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def no_plugin_anywhere(monkeypatch, tmp_path):
    """An empty plugin search path (the plugin may be built in this checkout)."""
    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    monkeypatch.setattr(native_libraries, "search_folders", lambda: [tmp_path / "nowhere"])


def parser():
    p = argparse.ArgumentParser(prog="pom-deploy")
    register(p.add_subparsers(dest="command", required=True))
    return p


# ---- planning and options ---------------------------------------------------------------

def test_plan_uses_metadata_profiles_and_default_output(tmp_path, no_plugin_anywhere):
    plan = plan_build(tiny_onnx(tmp_path / "m.onnx"))
    assert plan.output == tmp_path / "m.engine"
    assert plan.profiles == [{"x": ShapeRange((1, 1, 16), (1, 32, 16), (2, 128, 16))}]
    assert plan.graph_precision == "fp32" and plan.fused_nodes == 0 and plan.plugin_library is None
    assert plan.spec.kind == "full"


def test_plan_profile_override_and_file_checks(tmp_path):
    source = tiny_onnx(tmp_path / "m.onnx")
    plan = plan_build(source, tmp_path / "o.engine", BuildOptions(profiles=[{"x": ShapeRange((1, 1, 16), (4, 8, 16), (8, 64, 16))}]))
    assert plan.profiles[0]["x"].max == (8, 64, 16)
    (tmp_path / "o.engine").write_bytes(b"old")
    with pytest.raises(EngineBuildError, match="pass --force"):
        plan_build(source, tmp_path / "o.engine")
    assert plan_build(source, tmp_path / "o.engine", BuildOptions(force=True)).output.name == "o.engine"
    with pytest.raises(ModelLoadError, match="no such file"):
        plan_build(tmp_path / "missing.onnx")
    with pytest.raises(EngineBuildError, match="does not exist"):
        plan_build(source, tmp_path / "nodir" / "m.engine")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(ModelLoadError, match="not a valid ONNX"):
        plan_build(tmp_path / "junk.onnx")


@pytest.mark.parametrize("options, message", [
    (BuildOptions(dla_core=0), "DLA runs fp16"),
    (BuildOptions(dla_core=-1, precision="fp16"), "--dla-core must be >= 0"),
    (BuildOptions(dla_core=0, precision="fp16", version_compatible=True), "cannot be combined"),
    (BuildOptions(optimization_level=6), "0..5"),
    (BuildOptions(precision="int4"), "unknown precision"),
    (BuildOptions(hardware_compatibility="turing+"), "--hardware-compatibility"),
])
def test_plan_rejects_bad_options(tmp_path, options, message):
    with pytest.raises(EngineBuildError, match=message):
        plan_build(tiny_onnx(tmp_path / "m.onnx"), None, options)


def test_parse_size():
    assert parse_size("512M") == 512 << 20
    assert parse_size("2G") == parse_size("2GiB") == 2 << 30
    assert parse_size("1.5k") == 1536 and parse_size("4096") == 4096
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(EngineBuildError):
            parse_size(bad)


@pytest.mark.parametrize("precision, graph, strongly, version, expected", [
    ("fp32", "fp32", None, "10.3.0", (False, None)),
    ("fp16", "fp32", None, "10.3.0", (False, "fp16")),
    ("bf16", "fp32", None, "10.13.3", (False, "bf16")),
    ("fp32", "fp16", None, "10.3.0", (True, None)),  # the ONNX carries the types
    ("fp16", "fp16", None, "10.13.3", (True, None)),
    ("fp32", "fp32", True, "10.3.0", (True, None)),
    ("fp32", "fp32", None, "11.1.0", (True, None)),  # TensorRT 11: strongly typed only
    ("fp16", "fp16", None, "11.1.0", (True, None)),
])
def test_resolve_typing(precision, graph, strongly, version, expected):
    assert resolve_typing(precision, graph, strongly, version) == expected


def test_fp16_flag_on_tensorrt_11_asks_for_an_fp16_export():
    with pytest.raises(EngineBuildError, match="strongly typed networks only.*export the model in fp16"):
        resolve_typing("fp16", "fp32", None, "11.0.0")
    with pytest.raises(EngineBuildError, match="strongly typed build"):
        resolve_typing("bf16", "fp32", True, "10.3.0")


def test_fp16_graph_precision_is_read(tmp_path):
    assert plan_build(tiny_onnx(tmp_path / "h.onnx", dtype="float16")).graph_precision == "fp16"


def test_graph_precision_comes_from_what_an_export_writes(tmp_path, exported_video):
    """The metadata of a real export decides, even beside a graph whose inputs say float16 (where
    the fallback that reads input types would give fp16: the earlier lookup of the precision as a
    NumPy name never matched an export, so it always fell back); format-1 files (key ``dtype``,
    as exports wrote it, or a NumPy name) still read."""
    full, _ = exported_video
    exported = spec_of(onnx.load(str(full.path), load_external_data=False))
    assert exported.precision == "fp32" and json.loads(exported.to_json())["format_version"] == 2
    assert plan_build(full.path).graph_precision == "fp32"
    fp16_inputs = onnx.load(str(tiny_onnx(tmp_path / "h.onnx", dtype="float16")))
    assert graph_precision(fp16_inputs, exported) == "fp32"
    assert graph_precision(fp16_inputs, None) == "fp16"
    for written, read in (("fp16", "fp16"), ("bf16", "bf16"), ("float16", "fp16"), ("float32", "fp32")):
        format_1 = {**json.loads(exported.to_json()), "format_version": 1, "dtype": written}
        del format_1["precision"]
        assert GraphSpec.from_json(json.dumps(format_1)).precision == read


# ---- plugin library and the model-local function -----------------------------------------

def test_plugin_search_env_override(tmp_path, monkeypatch):
    library = tmp_path / "libpom_deploy_plugins.so"
    library.write_bytes(b"")
    monkeypatch.setenv(PLUGIN_ENV, str(tmp_path))
    assert find_plugin_library() == library
    monkeypatch.setenv(PLUGIN_ENV, str(library))
    assert find_plugin_library() == library
    assert find_plugin_library(library) == library
    with pytest.raises(PluginError, match="not found"):
        find_plugin_library(tmp_path / "libmissing.so")


def test_plugin_search_follows_the_one_rule(tmp_path, monkeypatch):
    """The rule of pom_deploy.ops.native_libraries, as for the onnxruntime op: a named path that
    does not exist is an error, "none" turns the search off, then the user folder, the package's
    lib/ and the checkout's build/plugins/."""
    monkeypatch.setenv(PLUGIN_ENV, os.pathsep.join([str(tmp_path / "typo"), str(tmp_path)]))
    with pytest.raises(PluginError, match="typo, which does not exist"):
        find_plugin_library()
    monkeypatch.setenv(PLUGIN_ENV, "none")
    assert find_plugin_library() is None
    monkeypatch.setenv(native_libraries.USER_LIBRARY_DIR_ENV, str(tmp_path / "user"))
    places = [p.as_posix() for p in native_libraries.search_folders()]
    assert places[0] == (tmp_path / "user").as_posix()
    assert places[1].endswith("pom_deploy/lib") and places[2].endswith("build/plugins")


def test_fused_model_plans_plugin_use(tmp_path, monkeypatch, no_plugin_anywhere):
    source = tiny_onnx(tmp_path / "f.onnx", fused=True)
    plan = plan_build(source)
    assert plan.fused_nodes == 1 and plan.plugin_library is None  # none found: unfused body
    library = tmp_path / "libpom_deploy_plugins.so"
    library.write_bytes(b"")
    monkeypatch.setattr(native_libraries, "search_folders", lambda: [tmp_path])
    assert plan_build(source).plugin_library == library
    assert plan_build(source, None, BuildOptions(plugin=False)).plugin_library is None
    assert plan_build(source, None, BuildOptions(plugin=str(library))).plugin_library == library
    with pytest.raises(PluginError, match="not found"):
        plan_build(source, None, BuildOptions(plugin=str(tmp_path / "other.so")))


def test_local_function_rule_and_stripping(tmp_path):
    assert must_strip_function("10.3.0.30", use_plugin=True)  # JetPack 6: the function would win
    assert not must_strip_function("10.7.0", use_plugin=True)
    assert not must_strip_function("11.1.0", use_plugin=True)
    assert not must_strip_function("10.3.0", use_plugin=False)  # unfused build keeps the body
    model = onnx.load(str(tiny_onnx(tmp_path / "f.onnx", fused=True)))
    assert fused_nodes(model) == 1
    assert strip_local_function(model) and len(model.functions) == 0
    assert not strip_local_function(model)
    assert fused_nodes(model) == 1  # the node stays, for the plugin


def test_fused_tiny_model_runs_on_onnxruntime(tmp_path):
    # The node's body is a stand-in (Identity), so the body must run, not the op's CPU kernel
    # (which a checkout with build/plugins/ would otherwise register).
    backend = OnnxRuntimeBackend(tiny_onnx(tmp_path / "f.onnx", fused=True), device="cpu", ort_ops=False)
    x = np.ones((1, 4, 16), np.float32)
    np.testing.assert_array_equal(backend.run({"x": x})["y"], 2 * x)


# ---- without TensorRT ----------------------------------------------------------------------

def assert_install_hint(error):
    message = str(error)
    assert message == INSTALL_HINT and "\n" not in message
    assert "pip install 'pom-deploy[trt]'" in message and "onnxruntime" in message


@no_tensorrt
def test_build_engine_without_tensorrt_says_what_to_install(tmp_path):
    with pytest.raises(BackendUnavailableError) as info:
        build_engine(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", precision="fp16")
    assert_install_hint(info.value)
    assert not (tmp_path / "m.engine").exists()


@no_tensorrt
def test_tensorrt_backend_without_tensorrt(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        TensorRTBackend(tmp_path / "missing.engine")
    (tmp_path / "m.engine").write_bytes(b"plan")
    with pytest.raises(BackendUnavailableError) as info:
        TensorRTBackend(tmp_path / "m.engine")
    assert_install_hint(info.value)


@no_tensorrt
@pytest.mark.parametrize("argv", [
    ["build-engine", "{onnx}", "--fp16", "--profile", "x:1x1x16,1x64x16,2x256x16", "--workspace", "1G",
     "--hardware-compatibility", "ampere+", "--optimization-level", "3", "--timing-cache", "{tmp}/cache.bin"],
    ["compare", "{onnx}", "--engine", "{tmp}/m.engine", "--fp16"],
])
def test_cli_without_tensorrt(tmp_path, argv):
    source = tiny_onnx(tmp_path / "m.onnx")
    if argv[0] == "compare":
        (tmp_path / "m.engine").write_bytes(b"plan")
    args = parser().parse_args([a.format(onnx=source, tmp=tmp_path) for a in argv])
    with pytest.raises(BackendUnavailableError) as info:
        args.func(args)
    assert_install_hint(info.value)


def test_cli_parses_every_build_option(tmp_path):
    args = parser().parse_args([
        "build-engine", "m.onnx", "-o", "m.engine", "--bf16", "--strongly-typed", "--profile", "x:1x1x16,1x8x16,2x64x16",
        "--profile", "x:1x1x16", "--plugin", "lib.so", "--workspace", "256M", "--version-compatible",
        "--dla-core", "1", "--optimization-level", "5", "--timing-cache", "t.cache", "--force"])
    options = build_options(args)
    assert options.precision == "bf16" and options.strongly_typed is True
    assert [p["x"].max for p in options.profiles] == [(2, 64, 16), (1, 1, 16)]
    assert options.plugin == "lib.so" and options.workspace == 256 << 20 and options.version_compatible
    assert (options.dla_core, options.optimization_level, options.timing_cache, options.force) == (1, 5, "t.cache", True)
    defaults = build_options(parser().parse_args(["build-engine", "m.onnx", "--no-plugin"]))
    assert (defaults.precision, defaults.strongly_typed, defaults.profiles, defaults.plugin) == ("fp32", None, None, False)


@pytest.mark.parametrize("argv", [
    ["build-engine", "m.onnx", "--fp16", "--bf16"],
    ["build-engine", "m.onnx", "--plugin", "x.so", "--no-plugin"],
    ["build-engine", "m.onnx", "--hardware-compatibility", "turing+"],
    ["compare", "m.onnx"],  # --engine is required
])
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2


def test_cli_reports_bad_values_before_looking_for_tensorrt(tmp_path):
    source = tiny_onnx(tmp_path / "m.onnx")
    for argv, error, message in [
        (["build-engine", str(source), "--profile", "x:1x2"], ProfileError, "fixed to 16|has 3 dims"),
        (["build-engine", str(source), "--profile", "y:1x1x16"], ProfileError, "no input named 'y'"),
        (["build-engine", str(source), "--workspace", "huge"], EngineBuildError, "bad size"),
        (["build-engine", str(source), "--dla-core", "0"], EngineBuildError, "DLA"),
        (["compare", str(source), "--engine", str(tmp_path / "none.engine")], ModelLoadError, "no such file"),
    ]:
        args = parser().parse_args(argv)
        with pytest.raises(error, match=message):
            args.func(args)
    (tmp_path / "m.engine").write_bytes(b"old")
    args = parser().parse_args(["build-engine", str(source)])
    with pytest.raises(EngineBuildError, match="--force"):
        args.func(args)


# ---- comparison ----------------------------------------------------------------------------

def test_compare_outputs_figures():
    ref = {"y": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4), "z": np.ones(3, np.float32)}
    same = compare_outputs(ref, {k: v.copy() for k, v in ref.items()}, atol=1e-5, rtol=1e-5)
    assert [o.name for o in same] == ["y", "z"] and all(o.passed and o.max_absdiff == 0 for o in same)
    off = {"y": ref["y"] + 0.01, "z": ref["z"].astype(np.float16)}
    rows = {o.name: o for o in compare_outputs(ref, off, atol=1e-3, rtol=1e-3)}
    assert not rows["y"].passed and rows["y"].max_absdiff == pytest.approx(0.01, rel=1e-3)
    assert rows["y"].shape == (2, 3, 4) and rows["z"].passed  # fp16 candidate is compared in float32


def test_compare_outputs_rejects_mismatched_runs():
    with pytest.raises(ComparisonError, match="different outputs"):
        compare_outputs({"y": np.zeros(2)}, {"w": np.zeros(2)}, 1e-3, 1e-3)
    with pytest.raises(ComparisonError, match="shape"):
        compare_outputs({"y": np.zeros(2)}, {"y": np.zeros(3)}, 1e-3, 1e-3)


def test_compare_backends_on_two_onnxruntime_sessions(tmp_path):
    source = tiny_onnx(tmp_path / "m.onnx")
    reference, candidate = OnnxRuntimeBackend(source, device="cpu"), OnnxRuntimeBackend(source, device="cpu")
    plan = plan_build(source)
    feeds = example_feeds(reference.spec.inputs, opt_shapes(plan.profiles[0]), seed=3)
    assert feeds["x"].shape == (1, 32, 16) and feeds["x"].dtype == np.float32
    # One graph in two sessions with the same options: the same float32 operations in the same
    # order, so bit-identical (a difference of 0 passes any tolerance); this checks the plumbing.
    report = compare_backends(reference, candidate, feeds, atol=1e-6, rtol=1e-6)
    assert report.passed and report.shapes == {"x": (1, 32, 16)}
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report_table(report))
    assert "PASS" in console.export_text()


def test_example_feeds_dtypes_and_zero_state():
    inputs = [TensorSpec("x", ["b", 4], "float16"), TensorSpec("labels", ["b"], "int64"), TensorSpec("m", ["b", 4], "bool"),
              TensorSpec("past.0.mean", ["b", 8], "float32")]
    shapes = {t.name: (2, *[d for d in t.shape if isinstance(d, int)]) for t in inputs}
    feeds = example_feeds(inputs, shapes, seed=0, state_inputs={"past.0.mean"})
    assert [str(feeds[t.name].dtype) for t in inputs] == ["float16", "int64", "bool", "float32"]
    assert feeds["x"].shape == (2, 4) and not feeds["past.0.mean"].any()
    assert np.array_equal(feeds["x"], example_feeds(inputs, shapes, seed=0)["x"])


# ---- build orchestration with TensorRT faked (what build_engine does around Polygraphy) -----

def test_engine_bytes_are_saved_as_built_never_deserialized(tmp_path, monkeypatch):
    """Polygraphy's EngineBytesFromNetwork + SaveBytes (as its own convert does): the serialized
    engine goes to the file as built. The engine-object loaders (EngineFromNetwork, SaveEngine)
    are made to fail, so a build that deserialized would fail here."""
    from types import SimpleNamespace

    import polygraphy.backend.trt as polygraphy_trt

    from pom_deploy.tensorrt import build as build_module

    built = {}

    class FakeEngineBytes:
        def __init__(self, network, config=None, save_timing_cache=None):
            built.update(network=network, config=config)

        def __call__(self):
            return b"serialized engine"

    def refuse(*args, **kwargs):
        raise AssertionError("the engine was deserialized")

    monkeypatch.setattr(polygraphy_trt, "EngineBytesFromNetwork", FakeEngineBytes)
    monkeypatch.setattr(polygraphy_trt, "EngineFromNetwork", refuse)
    monkeypatch.setattr(polygraphy_trt, "SaveEngine", refuse)
    plan = plan_build(tiny_onnx(tmp_path / "f.onnx"), tmp_path / "f.engine", BuildOptions(version_compatible=True))
    trt = SimpleNamespace(__version__="11.1.0.5", MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"))
    build_module._build_with_polygraphy(plan, str(plan.onnx_path), tmp_path / "f.engine", True, None, trt)
    assert (tmp_path / "f.engine").read_bytes() == b"serialized engine"
    assert built["network"] is not None and built["config"] is not None


def two_configurations_onnx(path):
    """Two PolyAggregate nodes of different configurations, each with its own overload of the
    model-local function, as an export writes them: y = -(x + x) through bodies Identity and Neg."""
    elem = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", elem, ["batch", "tokens", 16])
    y = helper.make_tensor_value_info("y", elem, ["batch", "tokens", 16])
    attributes = ["variant", "degree", "mode", "plugin_version", "plugin_namespace"]
    nodes, functions = [helper.make_node("Add", ["x", "x"], ["h0"])], []
    for index, (degree, body) in enumerate([(2, "Identity"), (3, "Neg")]):
        overload = f"v2_mean_k{degree}_fp32"
        node = helper.make_node(OP_TYPE, [f"h{index}"], ["y" if index else "h1"], domain=OP_DOMAIN, variant="v2",
                                degree=degree, mode="mean", plugin_version="1", plugin_namespace=OP_DOMAIN)
        node.overload = overload
        nodes.append(node)
        function = helper.make_function(OP_DOMAIN, OP_TYPE, ["X"], ["Y"], [helper.make_node(body, ["X"], ["Y"])],
                                        [helper.make_opsetid("", 18)], attributes=attributes)
        function.overload = overload
        functions.append(function)
    model = helper.make_model(helper.make_graph(nodes, "two", [x], [y]), functions=functions,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(OP_DOMAIN, 1)])
    model.ir_version = 10
    spec = GraphSpec(kind="full", precision="fp32", fused_ops=True,
                     inputs=[TensorSpec("x", ["batch", "tokens", 16], "float32", [1, 1, 16], [1, 32, 16], [2, 128, 16])],
                     outputs=[TensorSpec("y", ["batch", "tokens", 16], "float32")])
    helper.set_model_props(model, {METADATA_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def bodies_as_tensorrt_picks_them(model) -> list[str]:
    """The body onnx-tensorrt's ModelImporter gives each node: its table of model-local
    functions is keyed by name only (``localFunctions().insert({name, ...})``, the first of a
    name stays), looked up by ``node.op_type()``; None for a node that is no function call."""
    table = {}
    for function in model.functions:
        table.setdefault(function.name, function)
    return [table[n.op_type].overload if n.op_type in table else None for n in model.graph.node]


def test_build_from_function_bodies_gives_each_node_its_own(tmp_path, monkeypatch):
    """--no-plugin: TensorRT would give both nodes the first body (the degree-2 one); the model it
    parses has the bodies inlined, each node its own, and computes what onnxruntime (which
    resolves overloads) computes on the export."""
    from types import SimpleNamespace

    import onnxruntime as ort

    from pom_deploy.tensorrt import build as build_module

    source = two_configurations_onnx(tmp_path / "two.onnx")
    exported = onnx.load(str(source))
    assert bodies_as_tensorrt_picks_them(exported) == [None, "v2_mean_k2_fp32", "v2_mean_k2_fp32"]  # the bug
    parsed = {}

    def fake_build(plan, parse_path, destination, strong, flag, trt):
        parsed["model"] = onnx.load(parse_path)
        destination.write_bytes(b"serialized engine")

    monkeypatch.setattr(build_module, "require_tensorrt", lambda: SimpleNamespace(__version__="10.3.0.30"))
    monkeypatch.setattr(build_module, "current_environment",
                        lambda: {"tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7"})
    monkeypatch.setattr(build_module, "_build_with_polygraphy", fake_build)
    result = build_engine(source, tmp_path / "two.engine", plugin=False)
    model = parsed["model"]
    assert not model.functions and fused_nodes(model) == 0
    assert set(bodies_as_tensorrt_picks_them(model)) == {None}
    assert [n.op_type for n in model.graph.node] == ["Add", "Identity", "Neg"]
    x = np.linspace(-1, 1, 2 * 3 * 16, dtype=np.float32).reshape(2, 3, 16)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(run(model), run(exported))
    np.testing.assert_array_equal(run(model), -(x + x))
    assert result.sidecar["plugin"]["function_bodies_inlined"] is True and result.warnings


@pytest.mark.parametrize("version, stripped", [("10.3.0.30", True), ("10.13.3.9", False)])
def test_build_engine_writes_engine_and_sidecar_atomically(tmp_path, monkeypatch, version, stripped):
    from types import SimpleNamespace

    from pom_deploy.tensorrt import build as build_module
    from pom_deploy.tensorrt.sidecar import read_sidecar, spec_from_sidecar

    source = tiny_onnx(tmp_path / "f.onnx", fused=True)
    library = tmp_path / "libpom_deploy_plugins.so"
    library.write_bytes(b"")
    seen = {}

    def fake_build(plan, parse_path, destination, strong, flag, trt):
        seen["functions"] = len(onnx.load(parse_path).functions)
        seen["typing"] = (strong, flag)
        destination.write_bytes(b"serialized engine")

    monkeypatch.setattr(build_module, "require_tensorrt", lambda: SimpleNamespace(__version__=version))
    monkeypatch.setattr(build_module, "current_environment",
                        lambda: {"tensorrt_version": version, "gpu_name": "Orin", "compute_capability": "8.7"})
    monkeypatch.setattr(build_module, "load_plugin_library", lambda path, trt: "load_library")
    monkeypatch.setattr(build_module, "_build_with_polygraphy", fake_build)
    result = build_engine(source, tmp_path / "f.engine", precision="fp16", plugin=str(library), workspace=1 << 30)
    assert (tmp_path / "f.engine").read_bytes() == b"serialized engine"
    assert seen == {"functions": 0 if stripped else 1, "typing": (False, "fp16")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.engine", "f.engine.json", "f.onnx", "libpom_deploy_plugins.so"]
    sidecar = read_sidecar(result.engine_path)
    assert sidecar == result.sidecar
    assert (sidecar["tensorrt_version"], sidecar["gpu_name"], sidecar["compute_capability"]) == (version, "Orin", "8.7")
    assert sidecar["precision"] == "fp16" and sidecar["strongly_typed"] is False
    assert sidecar["plugin"] == {"fused_nodes": 1, "library": str(library.resolve()), "loaded_by": "load_library",
                                 "function_stripped": stripped, "function_bodies_inlined": False}
    assert sidecar["profiles"] == [{"x": {"min": [1, 1, 16], "opt": [1, 32, 16], "max": [2, 128, 16]}}]
    assert sidecar["options"]["workspace"] == 1 << 30 and len(sidecar["source_onnx"]["sha256"]) == 64
    assert spec_from_sidecar(sidecar).fused_ops is True
    with pytest.raises(EngineBuildError, match="--force"):
        build_engine(source, tmp_path / "f.engine")
