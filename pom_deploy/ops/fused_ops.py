"""``PolyAggregate`` as a PyTorch custom op that exports to one ONNX node.

While ``fused_ops_export()`` is active, PoM layers call ``torch.ops.pom_deploy.poly_aggregate``
instead of the decomposed polynomial + mean; the torch exporter translates it into a
``pom_deploy::PolyAggregate`` node (a TensorRT plugin takes it), and ``add_function_bodies``
gives every such node a model-local ONNX function made of standard ops, exported by the
torch exporter from the same decomposed code, so onnxruntime runs the file without any plugin.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import onnx
import torch
from onnx.defs import OpSchema

from ..models import functional as P
from . import poly_aggregate as ref
from .poly_aggregate_abi import MAX_DEGREE, MAX_ROPE_DEGREE


@contextlib.contextmanager
def fused_ops_export():
    """Route PoM aggregations through the fused op (used while exporting). Yields the layers it
    left decomposed: a dict {layer: reason}, filled as the model runs."""
    left: dict[object, str] = {}

    def fused_or_none(x, coeff, mask, variant, degree, rotation, owner):
        reason = why_decomposed(x, coeff, mask, variant, degree, rotation)
        if reason is not None:
            left.setdefault(owner, reason)
            return None
        mode, frame_tokens = mode_of(mask)
        cos, sin = (None, None) if rotation is None else (rotation.cos, rotation.sin)
        return _poly_aggregate_op(x, coeff, mask if mode == "masked" else None, cos, sin, variant, degree, mode,
                                  frame_tokens, "none" if rotation is None else rotation.kind)

    with P.fused_aggregate(fused_or_none):
        yield left


def why_decomposed(x: torch.Tensor, coeff: torch.Tensor | None, mask, variant: str, degree: int,
                   rotation: P.Rotation | None) -> str | None:
    """Why the op does not cover a layer with these inputs, mask and configuration (None: it
    does). The node has one type for all its inputs (the schema's T), so a mask or coefficients
    of another dtype than x (a bool mask, a float32 mask in an fp16 export) leave the layer
    decomposed rather than fail the checker."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 3:
        return "a (B, T, N) mask: one matrix product per sequence, left to the GEMM"
    for name, tensor in (("mask", mask), ("coefficients", coeff)):
        if isinstance(tensor, torch.Tensor) and tensor.dtype != x.dtype:
            return (f"a {_dtype_name(tensor)} {name} tensor with {_dtype_name(x)} features: "
                    f"the op takes every input in one dtype")
    if mode_of(mask) is None:
        return f"a mask the op has no mode for ({type(mask).__name__})"
    if degree > MAX_DEGREE:
        return f"degree {degree} > {MAX_DEGREE}, the kernels' limit"
    if rotation is not None and variant != "v2":
        return "RoPE on v1 features: the kernels rotate v2 features only"
    if rotation is not None and degree > MAX_ROPE_DEGREE:
        return f"RoPE with degree {degree} > {MAX_ROPE_DEGREE}, the RoPE kernels' limit (MAX_ROPE_DEGREE)"
    return None


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def mode_of(mask) -> tuple[str, int] | None:
    """(op mode, frame_tokens) for a layer mask, or None when the op has no mode for it."""
    if mask is None:
        return "mean", 0
    if isinstance(mask, str) and mask == "causal":
        return "causal", 0
    if isinstance(mask, P.BlockCausalMask):
        return "causal", mask.frame_tokens
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return "masked", 0
    return None


def decomposed(x: torch.Tensor, coeff: Optional[torch.Tensor], mask: Optional[torch.Tensor], cos: Optional[torch.Tensor],
               sin: Optional[torch.Tensor], variant: str, degree: int, mode: str, frame_tokens: int, rope: str) -> torch.Tensor:
    """The op in plain PyTorch ops, the layers' own code: what the function body is exported from."""
    features = P.v1_features(x, degree) if variant == "v1" else P.v2_features(x, coeff)
    rotation = None if rope == "none" else P.Rotation(rope, cos, sin)
    causal = P.BlockCausalMask(frame_tokens) if frame_tokens else "causal"
    layer_mask = {"mean": None, "causal": causal, "masked": mask}[mode]
    return P.aggregate(P.rotate(features, rotation), layer_mask).to(x.dtype)


@torch.library.custom_op("pom_deploy::poly_aggregate", mutates_args=())
def _poly_aggregate_op(x: torch.Tensor, coeff: Optional[torch.Tensor], mask: Optional[torch.Tensor], cos: Optional[torch.Tensor],
                       sin: Optional[torch.Tensor], variant: str, degree: int, mode: str, frame_tokens: int, rope: str) -> torch.Tensor:
    return decomposed(x, coeff, mask, cos, sin, variant, degree, mode, frame_tokens, rope).clone()


@_poly_aggregate_op.register_fake
def _(x, coeff, mask, cos, sin, variant, degree, mode, frame_tokens, rope):
    tokens = x.shape[1] if mode == "causal" else 1
    return x.new_empty(x.shape[0], tokens, x.shape[2])


# --- ONNX side -------------------------------------------------------------------------

OPSET_VERSION = 1


def _register_schema() -> None:
    if onnx.defs.has(ref.OP_TYPE, ref.OP_DOMAIN):
        return
    string = OpSchema.AttrType.STRING
    onnx.defs.register_schema(OpSchema(
        ref.OP_TYPE, ref.OP_DOMAIN, OPSET_VERSION,
        doc="Polynomial features of x and their mean over tokens, accumulated in float32 "
            "(docs/poly_aggregate.md). Inputs: x (B, N, C), then coeff (C, K) for v2, then mask (B, N) for masked, "
            "then cos, sin (B or 1, N, C/2) for rope.",
        inputs=[OpSchema.FormalParameter("inputs", "T", param_option=OpSchema.FormalParameterOption.Variadic,
                                         is_homogeneous=True, min_arity=1)],
        outputs=[OpSchema.FormalParameter("y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "x, coefficients, mask and output")],
        attributes=[
            OpSchema.Attribute("variant", string, "v1 or v2"),
            OpSchema.Attribute("degree", OpSchema.AttrType.INT, "polynomial degree K"),
            OpSchema.Attribute("mode", string, "mean, causal or masked"),
            # Optional without a schema default, so that writers leave them off at 0 and "none".
            OpSchema.Attribute("frame_tokens", OpSchema.AttrType.INT, "causal: tokens per frame (block-causal); absent or 0: off",
                               required=False),
            OpSchema.Attribute("rope", string, 'none, 1d or 2d: rotate the features by cos, sin; absent: "none"', required=False),
            OpSchema.Attribute("plugin_version", onnx.helper.make_attribute("plugin_version", ref.PLUGIN_VERSION),
                               "for TensorRT's plugin lookup"),
            OpSchema.Attribute("plugin_namespace", onnx.helper.make_attribute("plugin_namespace", ref.PLUGIN_NAMESPACE),
                               "for TensorRT's plugin lookup"),
        ],
    ))


_register_schema()


def overload_name(variant: str, mode: str, degree: int, dtype: str, frame_tokens: int = 0, rope: str = "none") -> str:
    """One function body per (variant, mode, degree, dtype, frame_tokens, rope): the node's
    ``overload``; the names of plain nodes' overloads are as before the last two existed."""
    frames = f"_f{frame_tokens}" if frame_tokens else ""
    rotation = f"_rope{rope}" if rope != "none" else ""
    return f"{variant}_{mode}{frames}{rotation}_k{degree}_{dtype}"


def onnx_translation(x, coeff, mask, cos, sin, variant: str, degree: int, mode: str, frame_tokens: int, rope: str):
    """onnxscript translation of the custom op, for ``custom_translation_table``; ``frame_tokens``
    and ``rope`` are written only when not at their defaults (plain nodes as before)."""
    from onnxscript.values import Opset

    inputs = [x] + [t for t in (coeff, mask, cos, sin) if t is not None]
    optional = {**({"frame_tokens": frame_tokens} if frame_tokens else {}), **({"rope": rope} if rope != "none" else {})}
    return Opset(ref.OP_DOMAIN, OPSET_VERSION).PolyAggregate(
        *inputs, variant=variant, degree=degree, mode=mode, **optional,
        plugin_version=ref.PLUGIN_VERSION, plugin_namespace=ref.PLUGIN_NAMESPACE,
    )


TRANSLATION_TABLE = {torch.ops.pom_deploy.poly_aggregate.default: onnx_translation}
