"""Function bodies of the fused op: each ``PolyAggregate`` node of an export gets a model-local
ONNX function in standard ops (traced by the torch exporter from the op's decomposed PyTorch
code), so that onnxruntime runs a fused file without any plugin."""

from __future__ import annotations

import functools
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
    def __init__(self, variant: str, degree: int, mode: str, frame_tokens: int, rope: str):
        super().__init__()
        self.variant, self.degree, self.mode, self.frame_tokens, self.rope = variant, degree, mode, frame_tokens, rope

    def forward(self, x, *rest):
        rest = list(rest)
        coeff = rest.pop(0) if self.variant == "v2" else None
        mask = rest.pop(0) if self.mode == "masked" else None
        cos, sin = rest if self.rope != "none" else (None, None)
        return fused_ops.decomposed(x, coeff, mask, cos, sin, self.variant, self.degree, self.mode, self.frame_tokens, self.rope)


def add_function_bodies(program, opset: int, dtype: str) -> int:
    """Give each PolyAggregate node a model-local function in standard ops (its overload);
    returns the number of such nodes."""
    from onnx_ir import serde

    model = program.model
    bodies: dict[str, Any] = {}
    count = 0
    for node in _all_nodes(model.graph):
        if node.op_type != OP_TYPE or node.domain != OP_DOMAIN:
            continue
        count += 1
        key = (*(node.attributes[a].value for a in ("variant", "degree", "mode")),
               node.attributes["frame_tokens"].value if "frame_tokens" in node.attributes else 0,
               node.attributes["rope"].value if "rope" in node.attributes else "none")
        variant, degree, mode, frame_tokens, rope = key
        overload = fused_ops.overload_name(variant, mode, degree, dtype, frame_tokens, rope)
        node.overload = overload
        if overload not in bodies:
            bodies[overload] = _function_body(key, by_precision(dtype).torch(), opset, overload)
    for function in bodies.values():
        model.functions[(function.domain, function.name, function.overload)] = serde.deserialize_function(function)
    if bodies and model.ir_version < 10:
        model.ir_version = 10  # function overloads
    return count


def _function_body(key: tuple, dtype: torch.dtype, opset: int, overload: str) -> onnx.FunctionProto:
    """The body for these arguments, a copy the caller may change: a trace takes seconds, and the
    body depends on nothing else, so each is traced once per process (repeated and test exports)."""
    body = onnx.FunctionProto()
    body.CopyFrom(_traced_function_body(key, dtype, opset, overload))
    return body


@functools.lru_cache(maxsize=None)
def _traced_function_body(key: tuple, dtype: torch.dtype, opset: int, overload: str) -> onnx.FunctionProto:
    """Trace the decomposed op with the torch exporter and wrap its graph as a FunctionProto."""
    variant, degree, mode, frame_tokens, rope = key
    channel_multiple = degree if variant == "v1" else {"none": 1, "1d": 2, "2d": 4}[rope]
    blocks = torch.export.Dim("channels_blocks", min=1)
    channels = blocks * channel_multiple if channel_multiple > 1 else torch.export.Dim("channels", min=2)
    batch = torch.export.Dim("batch")
    tokens = torch.export.Dim("frames", min=2) * frame_tokens if frame_tokens > 1 else torch.export.Dim("tokens", min=2)
    width, length = 4 * channel_multiple, 3 * max(frame_tokens, 1)
    args = [torch.randn(2, length, width, dtype=dtype)]
    shapes = [{0: batch, 1: tokens, 2: channels}]
    if variant == "v2":
        args.append(torch.randn(width, degree, dtype=dtype))
        shapes.append({0: channels})
    if mode == "masked":
        args.append(torch.ones(2, length, dtype=dtype))
        shapes.append({0: batch, 1: tokens})
    if rope != "none":  # tables of batch 1 (shared positions); onnxruntime broadcasts (B, N, C/2) ones alike
        args += [torch.randn(1, length, width // 2, dtype=dtype) for _ in range(2)]
        shapes += [{1: tokens, 2: blocks * (channel_multiple // 2) if channel_multiple > 2 else blocks}] * 2
    with warnings.catch_warnings(), quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_DecomposedOp(*key), tuple(args), dynamo=True, opset_version=opset,
                                    dynamic_shapes=(shapes[0], tuple(shapes[1:])) if len(shapes) > 1 else (shapes[0],),
                                    optimize=True, verbose=False)
    graph = program.model_proto.graph
    constants = [onnx.helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer]
    names = (["x"] + (["coeff"] if variant == "v2" else []) + (["mask"] if mode == "masked" else [])
             + (["cos", "sin"] if rope != "none" else []))
    function = onnx.helper.make_function(
        OP_DOMAIN, OP_TYPE,
        inputs=[i.name for i in graph.input], outputs=[o.name for o in graph.output],
        nodes=constants + list(graph.node),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        attributes=list(ONNX_ATTRIBUTES),
        doc_string=f"PolyAggregate {variant} mode={mode} degree={degree} frame_tokens={frame_tokens} rope={rope} "
                   f"in standard ops; inputs {names}",
    )
    function.overload = overload
    return function


def _all_nodes(graph):
    for node in graph:
        yield node
        for attr in node.attributes.values():
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.value)
