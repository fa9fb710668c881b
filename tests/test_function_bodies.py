"""The fused op's ONNX function bodies, what any onnxruntime runs for a ``PolyAggregate`` node
without a plugin, run alone on op-level inputs against the float64 NumPy oracle
(``pom_deploy.ops.poly_aggregate``) within its error bound.

float32 bodies only: the bound is for implementations that compute the features in float32, and
fp16/bf16 bodies compute them in the model dtype (docs/export.md, Precision); those are checked
against PyTorch in tests/test_export.py.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from pom_deploy.exporters.function_bodies import _function_body
from pom_deploy.exporters.onnx_export import DEFAULT_OPSET
from pom_deploy.ops import fused_ops
from pom_deploy.ops.poly_aggregate import OP_DOMAIN, OP_TYPE, error_bound, poly_aggregate

# (variant, degree, mode, frame_tokens, rope): every mode of both variants, block-causal frames, and
# RoPE 1-D/2-D in each mode. All but v1 masked are the bodies of tests/test_export.py's fused exports,
# traced once per process (a trace takes seconds).
CASES = [
    ("v1", 2, "causal", 0, "none"), ("v1", 3, "masked", 0, "none"),
    ("v2", 3, "mean", 0, "none"), ("v2", 3, "causal", 0, "none"), ("v2", 3, "masked", 0, "none"), ("v2", 3, "causal", 4, "none"),
    ("v2", 3, "mean", 0, "1d"), ("v2", 3, "causal", 0, "1d"), ("v2", 3, "masked", 0, "1d"),
    ("v2", 3, "mean", 0, "2d"), ("v2", 3, "causal", 0, "2d"), ("v2", 3, "masked", 0, "2d"),
]
SHAPES = [(2, 12, 24), (3, 4, 12)]  # (B, N, C): N a multiple of the frames, C of 2 and 4 (RoPE) and of the v1 degrees


def _input_names(variant, mode, rope):
    return (
        ["x"] + (["coeff"] if variant == "v2" else []) + (["mask"] if mode == "masked" else []) + (["cos", "sin"] if rope != "none" else [])
    )


def _body_session(case) -> ort.InferenceSession:
    """One PolyAggregate node whose only implementation is its model-local function body."""
    variant, degree, mode, frame_tokens, rope = case
    overload = fused_ops.overload_name(variant, mode, degree, "fp32", frame_tokens, rope)
    function = _function_body(case, torch.float32, DEFAULT_OPSET, overload)
    names = _input_names(variant, mode, rope)
    optional = {**({"frame_tokens": frame_tokens} if frame_tokens else {}), **({"rope": rope} if rope != "none" else {})}
    node = helper.make_node(OP_TYPE, names, ["y"], domain=OP_DOMAIN, variant=variant, degree=degree, mode=mode, **optional)
    node.overload = overload
    graph = helper.make_graph([node], "one_node", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, functions=[function], ir_version=10,
                              opset_imports=[helper.make_opsetid("", DEFAULT_OPSET), helper.make_opsetid(OP_DOMAIN, 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _inputs(case, shape, rng) -> dict[str, np.ndarray]:
    variant, degree, mode, _, rope = case
    batch, tokens, channels = shape
    feeds = {"x": (rng.standard_normal(shape) * 3).astype(np.float32)}  # beyond the clamp at 6 too
    if variant == "v2":
        feeds["coeff"] = rng.uniform(-0.5, 0.5, (channels, degree)).astype(np.float32)
    if mode == "masked":
        mask = (rng.random((batch, tokens)) < 0.6).astype(np.float32)
        mask[:, 0] = 1
        mask[-1] = 0  # a row with nothing to aggregate gives 0
        feeds["mask"] = mask
    if rope != "none":
        angles = rng.uniform(-np.pi, np.pi, (1, tokens, channels // 2))
        feeds["cos"], feeds["sin"] = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    return feeds


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_function_body_matches_oracle_within_error_bound(case):
    variant, degree, mode, frame_tokens, rope = case
    session = _body_session(case)
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        feeds = _inputs(case, shape, rng)
        (y,) = session.run(None, feeds)
        args = (feeds["x"], degree, variant, mode, feeds.get("coeff"), feeds.get("mask"))
        tables = dict(frame_tokens=frame_tokens, rope=rope, cos=feeds.get("cos"), sin=feeds.get("sin"))
        expected = poly_aggregate(*args, **tables)
        assert y.shape == expected.shape
        excess = np.abs(y - expected) - error_bound(*args, **tables)
        assert excess.max() <= 0, f"{shape}: {int((excess > 0).sum())} elements outside the bound, worst by {excess.max():.3g}"
