"""``PolyAggregate`` as a PyTorch custom op that exports to one ONNX node.

While ``fused_ops_export()`` is active, PoM layers call ``torch.ops.pom_deploy.poly_aggregate``
instead of the decomposed polynomial + mean; the torch exporter translates it into a
``pom_deploy::PolyAggregate`` node (a TensorRT plugin takes it), and ``add_function_bodies``
gives every such node a model-local ONNX function made of standard ops, exported by the
torch exporter from the same decomposed code, so onnxruntime runs the file without any plugin.
"""

from __future__ import annotations

from typing import Optional

import onnx
import torch
from onnx.defs import OpSchema

from ..models import functional as P
from . import poly_aggregate as ref

def fused_ops_export():
    """Route PoM aggregations through the fused op (used while exporting): a context manager."""
    return P.fused_aggregate(_fused_or_none)


def mode_of(mask) -> str | None:
    """The op mode for a layer mask, or None when the op does not cover it (full masks,
    block-causal masks: those stay decomposed)."""
    if mask is None:
        return "mean"
    if isinstance(mask, str) and mask == "causal":
        return "causal"
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return "masked"
    return None


def decomposed(x: torch.Tensor, coeff: Optional[torch.Tensor], mask: Optional[torch.Tensor], variant: str, degree: int, mode: str) -> torch.Tensor:
    """The op in plain PyTorch ops: what the function body is exported from."""
    features = P.v1_features(x, degree) if variant == "v1" else P.v2_features(x, coeff)
    layer_mask = {"mean": None, "causal": "causal", "masked": mask}[mode]
    return P.aggregate(features, layer_mask).to(x.dtype)


@torch.library.custom_op("pom_deploy::poly_aggregate", mutates_args=())
def _poly_aggregate_op(x: torch.Tensor, coeff: Optional[torch.Tensor], mask: Optional[torch.Tensor], variant: str, degree: int, mode: str) -> torch.Tensor:
    return decomposed(x, coeff, mask, variant, degree, mode).clone()


@_poly_aggregate_op.register_fake
def _(x, coeff, mask, variant, degree, mode):
    tokens = x.shape[1] if mode == "causal" else 1
    return x.new_empty(x.shape[0], tokens, x.shape[2])


def _fused_or_none(x: torch.Tensor, coeff: torch.Tensor | None, mask, variant: str, degree: int) -> torch.Tensor | None:
    """One ``pom_deploy::poly_aggregate`` call, or None for a mask the op does not cover."""
    mode = mode_of(mask)
    if mode is None:
        return None
    return _poly_aggregate_op(x, coeff, mask if mode == "masked" else None, variant, degree, mode)


# --- ONNX side -------------------------------------------------------------------------

OPSET_VERSION = 1


def _register_schema() -> None:
    if onnx.defs.has(ref.OP_TYPE, ref.OP_DOMAIN):
        return
    string = OpSchema.AttrType.STRING
    onnx.defs.register_schema(OpSchema(
        ref.OP_TYPE, ref.OP_DOMAIN, OPSET_VERSION,
        doc="Polynomial features of x and their mean over tokens, accumulated in float32 "
            "(docs/poly_aggregate.md). Inputs: x (B, N, C), then coeff (C, K) for v2, then mask (B, N) for masked.",
        inputs=[OpSchema.FormalParameter("inputs", "T", param_option=OpSchema.FormalParameterOption.Variadic, is_homogeneous=True, min_arity=1)],
        outputs=[OpSchema.FormalParameter("y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "x, coefficients, mask and output")],
        attributes=[
            OpSchema.Attribute("variant", string, "v1 or v2"),
            OpSchema.Attribute("degree", OpSchema.AttrType.INT, "polynomial degree K"),
            OpSchema.Attribute("mode", string, "mean, causal or masked"),
            OpSchema.Attribute("plugin_version", onnx.helper.make_attribute("plugin_version", ref.PLUGIN_VERSION), "for TensorRT's plugin lookup"),
            OpSchema.Attribute("plugin_namespace", onnx.helper.make_attribute("plugin_namespace", ref.PLUGIN_NAMESPACE), "for TensorRT's plugin lookup"),
        ],
    ))


_register_schema()


def overload_name(variant: str, mode: str, degree: int, dtype: str) -> str:
    """One function body per (variant, mode, degree, dtype): the node's ``overload``."""
    return f"{variant}_{mode}_k{degree}_{dtype}"


def onnx_translation(x, coeff, mask, variant: str, degree: int, mode: str):
    """onnxscript translation of the custom op, for ``custom_translation_table``."""
    from onnxscript.values import Opset

    inputs = [x] + [t for t in (coeff, mask) if t is not None]
    return Opset(ref.OP_DOMAIN, OPSET_VERSION).PolyAggregate(
        *inputs, variant=variant, degree=degree, mode=mode,
        plugin_version=ref.PLUGIN_VERSION, plugin_namespace=ref.PLUGIN_NAMESPACE,
    )


TRANSLATION_TABLE = {torch.ops.pom_deploy.poly_aggregate.default: onnx_translation}
