"""Function bodies of the fused op: each ``PolyAggregate`` node of an export gets a model-local
ONNX function in standard ops (traced by the torch exporter from the op's decomposed PyTorch
code), so that onnxruntime runs a fused file without any plugin."""

from __future__ import annotations

import warnings
from typing import Any

import onnx
import torch
import torch.nn as nn

from ..dtypes import by_precision
from ..ops import fused_ops
from ..ops.poly_aggregate import ONNX_ATTRIBUTES, OP_DOMAIN, OP_TYPE
from .tracing import quiet_exporter


class _DecomposedOp(nn.Module):
    def __init__(self, variant: str, degree: int, mode: str):
        super().__init__()
        self.variant, self.degree, self.mode = variant, degree, mode

    def forward(self, x, *rest):
        rest = list(rest)
        coeff = rest.pop(0) if self.variant == "v2" else None
        mask = rest.pop(0) if self.mode == "masked" else None
        return fused_ops.decomposed(x, coeff, mask, self.variant, self.degree, self.mode)


def add_function_bodies(program, opset: int, dtype: str) -> int:
    """Give each PolyAggregate node a model-local function in standard ops (its overload);
    returns the number of such nodes (0 when no aggregation was fusable: RoPE layers and
    block-causal or (B, T, N) masks stay decomposed)."""
    from onnx_ir import serde

    model = program.model
    bodies: dict[str, Any] = {}
    count = 0
    for node in _all_nodes(model.graph):
        if node.op_type != OP_TYPE or node.domain != OP_DOMAIN:
            continue
        count += 1
        variant, degree, mode = (node.attributes[a].value for a in ("variant", "degree", "mode"))
        overload = fused_ops.overload_name(variant, mode, degree, dtype)
        node.overload = overload
        if overload not in bodies:
            bodies[overload] = _function_body(variant, degree, mode, by_precision(dtype).torch(), opset, overload)
    for function in bodies.values():
        model.functions[(function.domain, function.name, function.overload)] = serde.deserialize_function(function)
    if bodies and model.ir_version < 10:
        model.ir_version = 10  # function overloads
    return count


def _function_body(variant: str, degree: int, mode: str, dtype: torch.dtype, opset: int, overload: str) -> onnx.FunctionProto:
    """Trace the decomposed op with the torch exporter and wrap its graph as a FunctionProto."""
    channels = torch.export.Dim("channels_blocks", min=1) * degree if variant == "v1" else torch.export.Dim("channels", min=2)
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", min=2)
    args = [torch.randn(2, 3, 4 * degree, dtype=dtype)]
    shapes = [{0: batch, 1: tokens, 2: channels}]
    if variant == "v2":
        args.append(torch.randn(4 * degree, degree, dtype=dtype))
        shapes.append({0: channels})
    if mode == "masked":
        args.append(torch.ones(2, 3, dtype=dtype))
        shapes.append({0: batch, 1: tokens})
    with warnings.catch_warnings(), quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_DecomposedOp(variant, degree, mode), tuple(args), dynamo=True, opset_version=opset,
                                    dynamic_shapes=(shapes[0], tuple(shapes[1:])) if len(shapes) > 1 else (shapes[0],),
                                    optimize=True, verbose=False)
    graph = program.model_proto.graph
    constants = [onnx.helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer]
    names = ["x", "coeff", "mask"] if variant == "v2" else ["x", "mask"]
    function = onnx.helper.make_function(
        OP_DOMAIN, OP_TYPE,
        inputs=[i.name for i in graph.input], outputs=[o.name for o in graph.output],
        nodes=constants + list(graph.node),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        attributes=list(ONNX_ATTRIBUTES),
        doc_string=f"PolyAggregate {variant} mode={mode} degree={degree} in standard ops; inputs {names[:len(graph.input)]}",
    )
    function.overload = overload
    return function


def _all_nodes(graph):
    for node in graph:
        yield node
        for attr in node.attributes.values():
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.value)
