"""TensorRT check of the PolyAggregate plugin: ONNX node -> parser -> engine -> enqueue.

Needs the Python `tensorrt` package and a plugin library built with TensorRT's headers.
`--load registry` uses IPluginRegistry.load_library (getCreators, as trtexec --dynamicPlugins
does); `--load dlopen` loads libpom_deploy_plugins_autoregister.so, next to the plugin library,
with ctypes.CDLL (its load-time registration, as Polygraphy --plugins and trtexec --staticPlugins
load libraries). Run each in its own process. Exits non-zero on a failure.

Besides every configuration in x's dtype, fp16/bf16 x with float32 coeff, mask, cos and sin
(SIDE_FLOAT32) in a strongly typed build, against the oracle of the exact float32 values; and, on
TensorRT 10.x, the fp32 node in a weakly typed --fp16/--bf16 build, printing the types TensorRT
chose for the plugin's inputs (float32 side inputs are now allowed; TensorRT picks).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

import onnx.helper as oh
import torch

try:
    import tensorrt as trt
except ImportError:  # make_model stays usable (and tested) without TensorRT
    trt = None

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_poly_aggregate import abi, bound_excess, oracle_and_bound, to_device, to_float64  # noqa: E402 - imported after sys.path gains the checkout and this folder

from pom_deploy.dtypes import by_name  # noqa: E402 - imported after sys.path gains the checkout and this folder
from pom_deploy.ops.poly_aggregate import (  # noqa: E402 - imported after sys.path gains the checkout and this folder
    OP_DOMAIN,
    OP_TYPE,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
)


# Configurations beyond the plain ones: (variant, mode, frame_tokens, rope, cos/sin batch 1 or B).
EXTENDED = [("v2", "mean", 0, "2d", 1), ("v2", "causal", 0, "1d", 2), ("v2", "masked", 0, "1d", 1),
            ("v1", "causal", 60, "none", 1), ("v2", "causal", 100, "2d", 1)]
# float32 side inputs under a 16-bit x: coeff and mask; coeff and per-batch tables (the causal
# chain); all four (masked RoPE); coeff and shared tables with frames (block-causal).
SIDE_FLOAT32 = [("v2", "masked", 0, "none", 1), ("v2", "causal", 0, "1d", 2), ("v2", "masked", 0, "2d", 1),
                ("v2", "causal", 100, "2d", 1)]


def make_model(variant: str, mode: str, degree: int, dtype: str, frame_tokens: int = 0, rope: str = "none",
               channels: int | None = None, side_dtype: str | None = None) -> bytes:
    """One PolyAggregate node with dynamic batch and tokens, as the exporter emits it: frame_tokens
    and rope only when not default (so the plain nodes are those written before they existed).
    With RoPE, cos and sin are (tables_batch, tokens, channels / 2), tables_batch being 1 or batch;
    `channels` fixes C (needed for the tables' last dimension). coeff, mask, cos and sin are of
    ``side_dtype`` (default: ``dtype``, x's and y's)."""
    elem = by_name(dtype).onnx
    side = by_name(side_dtype or dtype).onnx
    width = "channels" if channels is None else channels
    inputs = [oh.make_tensor_value_info("x", elem, ["batch", "tokens", width])]
    if variant == "v2":
        inputs.append(oh.make_tensor_value_info("coeff", side, [width, degree]))
    if mode == "masked":
        inputs.append(oh.make_tensor_value_info("mask", side, ["batch", "tokens"]))
    if rope != "none":
        half = "half_channels" if channels is None else channels // 2
        inputs += [oh.make_tensor_value_info(name, side, ["tables_batch", "tokens", half]) for name in ("cos", "sin")]
    out_tokens = "tokens" if mode == "causal" else 1
    output = oh.make_tensor_value_info("y", elem, ["batch", out_tokens, width])
    optional = {**({"frame_tokens": frame_tokens} if frame_tokens else {}), **({"rope": rope} if rope != "none" else {})}
    node = oh.make_node(OP_TYPE, [i.name for i in inputs], ["y"], domain=OP_DOMAIN, variant=variant,
                        degree=degree, mode=mode, **optional, plugin_version=PLUGIN_VERSION,
                        plugin_namespace=PLUGIN_NAMESPACE)
    graph = oh.make_graph([node], "poly_aggregate", inputs, [output])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(OP_DOMAIN, 1)])
    return model.SerializeToString()


def build_engine(logger, model: bytes, channels: int, degree: int, variant: str, mode: str, frame_tokens: int = 0,
                 rope: str = "none", table_batch: int = 1, weak_precision: str | None = None) -> bytes:
    """A strongly typed engine of the node, or with ``weak_precision`` ("fp16"/"bf16", TensorRT
    10.x only) a weakly typed one with that builder flag, detailed for the engine inspector."""
    builder = trt.Builder(logger)
    flags = 0
    if weak_precision is None and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # precision from the ONNX types
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    if weak_precision is not None:
        config.set_flag(trt.BuilderFlag.FP16 if weak_precision == "fp16" else trt.BuilderFlag.BF16)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    # Tokens from one frame (or token) to 1024 (the largest multiple of frame_tokens below it).
    least = max(frame_tokens, 1)
    most = 1024 // least * least
    profile.set_shape("x", (1, least, channels), (2, 300, channels), (4, most, channels))
    if variant == "v2":
        profile.set_shape("coeff", (channels, degree), (channels, degree), (channels, degree))
    if mode == "masked":
        profile.set_shape("mask", (1, least), (2, 300), (4, most))
    if rope != "none":
        for name in ("cos", "sin"):
            tables = (1, 2, 4) if table_batch > 1 else (1, 1, 1)
            profile.set_shape(name, (tables[0], least, channels // 2), (tables[1], 300, channels // 2),
                              (tables[2], most, channels // 2))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("engine build failed")
    return bytes(engine)


def run_engine(runtime, engine_bytes: bytes, feeds: dict[str, torch.Tensor], out: torch.Tensor) -> None:
    engine = runtime.deserialize_cuda_engine(engine_bytes)  # also checks plugin deserialization
    context = engine.create_execution_context()
    for name, tensor in feeds.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("y", out.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("enqueue failed")
    stream.synchronize()


def plugin_input_types(runtime, engine_bytes: bytes) -> list[str]:
    """The formats and types TensorRT chose for the PolyAggregate layer's inputs (engine inspector)."""
    inspector = runtime.deserialize_cuda_engine(engine_bytes).create_engine_inspector()
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)).get("Layers", [])
    plugin = [layer for layer in layers if isinstance(layer, dict) and OP_TYPE in json.dumps(layer)]
    return [str(tensor.get("Format/Datatype", tensor)) for layer in plugin for tensor in layer.get("Inputs", [])]


BATCH, TOKENS, CHANNELS, DEGREE = 2, 300, 12, 3  # every checked node's problem


def case_label(mode: str, frame_tokens: int, rope: str) -> str:
    return mode + (f" rope {rope}" if rope != "none" else "") + (f" F={frame_tokens}" if frame_tokens else "")


def check_case(logger, runtime, variant: str, mode: str, dtype: str, frame_tokens: int, rope: str, table_batch: int,
               seed: int, side_dtype: str | None = None) -> tuple[float, str]:
    """Build one PolyAggregate node (x in ``dtype``, coeff, mask, cos and sin in ``side_dtype``,
    default ``dtype``), run it on inputs drawn from ``seed`` (tables from ``seed + 1``) and compare
    with the oracle: (error / bound, "PASS", "FAIL" or "ERROR ...")."""
    options = {"frame_tokens": frame_tokens, "rope": rope}
    side = side_dtype or dtype
    x, coeff, mask = abi.make_inputs(seed, BATCH, TOKENS, CHANNELS, DEGREE, variant, mode, dtype, side_dtype)
    cos, sin = abi.make_rope_tables(seed + 1, table_batch, TOKENS, CHANNELS, side) if rope != "none" else (None, None)
    feeds = {name: to_device(a) for name, a in (("x", x), ("coeff", coeff), ("mask", mask), ("cos", cos), ("sin", sin))
             if a is not None}
    out = torch.empty((BATCH, TOKENS if mode == "causal" else 1, CHANNELS), dtype=feeds["x"].dtype, device="cuda")
    try:
        model = make_model(variant, mode, DEGREE, dtype, channels=CHANNELS, side_dtype=side_dtype, **options)
        engine = build_engine(logger, model, CHANNELS, DEGREE, variant, mode, table_batch=table_batch, **options)
        run_engine(runtime, engine, feeds, out)
        expected, bound = oracle_and_bound(x, DEGREE, variant, mode, coeff, mask, dtype, cos=cos, sin=sin, **options)
        excess = bound_excess(to_float64(out), expected, bound)
        return excess, "PASS" if excess <= 1 else "FAIL"
    except RuntimeError as error:
        return float("nan"), f"ERROR {error}"


def check_side_inputs(logger, runtime) -> int:
    """fp16/bf16 x with float32 side inputs (strongly typed, against the oracle), and the types a
    weakly typed 10.x build gives the plugin; the number of failures."""
    failures = 0
    for variant, mode, frame_tokens, rope, table_batch in SIDE_FLOAT32:
        options = {"frame_tokens": frame_tokens, "rope": rope}
        label = case_label(mode, frame_tokens, rope)
        for dtype in ("float16", "bfloat16"):
            excess, status = check_case(logger, runtime, variant, mode, dtype, frame_tokens, rope, table_batch, seed=7,
                                        side_dtype="float32")
            failures += status != "PASS"
            print(f"  {variant} {label:18} {dtype:8} float32 side inputs: error/bound {excess:.3f} {status}")
        if hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 10.x: which types does a weakly typed build choose?
            for precision in ("fp16", "bf16"):
                try:
                    model = make_model(variant, mode, DEGREE, "float32", channels=CHANNELS, **options)
                    engine = build_engine(logger, model, CHANNELS, DEGREE, variant, mode, table_batch=table_batch,
                                          weak_precision=precision, **options)
                    print(f"  {variant} {label:18} fp32 node, --{precision}: plugin inputs {plugin_input_types(runtime, engine)}")
                except RuntimeError as error:
                    failures += 1
                    print(f"  {variant} {label:18} fp32 node, --{precision}: ERROR {error}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugin", required=True, help="libpom_deploy_plugins.so built with TensorRT headers")
    parser.add_argument("--load", choices=["dlopen", "registry"], required=True)
    args = parser.parse_args()
    if trt is None:
        print("the tensorrt Python package is not installed")
        return 1

    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    if args.load == "dlopen":
        ctypes.CDLL(str(Path(args.plugin).with_name("libpom_deploy_plugins_autoregister.so")))
    else:
        registry.load_library(args.plugin)
    creator = registry.get_creator(OP_TYPE, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    print(f"TensorRT {trt.__version__}, load via {args.load}: creator {'found' if creator else 'NOT found'}")
    if creator is None:
        return 1

    runtime = trt.Runtime(logger)
    failures = 0
    configs = [(v, m, 0, "none", 1) for v in ("v1", "v2") for m in ("mean", "causal", "masked")] + EXTENDED
    for variant, mode, frame_tokens, rope, table_batch in configs:
        for dtype in ("float32", "float16", "bfloat16"):
            excess, status = check_case(logger, runtime, variant, mode, dtype, frame_tokens, rope, table_batch, seed=5)
            failures += status != "PASS"
            print(f"  {variant} {case_label(mode, frame_tokens, rope):18} {dtype:8} error/bound {excess:.3f} {status}")
    failures += check_side_inputs(logger, runtime)
    print(f"TensorRT plugin ({args.load}): {'all passed' if failures == 0 else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
