"""The exported graph's optimization: onnxscript's optimizer, as ``torch.onnx.export(optimize=True)``
runs it, without the one rewrite rule that does not scale.

The exporter's optimizer folds constants, tries 46 pattern-rewrite rules (twice), removes dead
code and applies onnxscript's ONNX fusions. On a DiT-XL-sized PoM graph (6,548 nodes) the rule
``SlicesSplit`` alone took 17 s of the 20 s the rules take per pass (86% of the optimizer, the
largest phase of the export), and rewrote nothing: it merges sibling Slices of one tensor, and
PoM graphs slice through Split already. Measured by timing each rule on that graph
(docs/benchmarks.md, "Export at model scale"); ``tests/test_export.py`` checks that the graphs of
the zoo models come out the same as with the exporter's own optimizer.

One rewrite is added: exact GELU, which the exporter writes ``x * (0.5 * (1 + erf(x / sqrt 2)))``,
is reordered to ``(x * (1 + erf(x / sqrt 2))) * 0.5``: the same ops and, 0.5 being a power of two,
the same values short of overflow, but the order onnxruntime's GeluFusion recognizes, so its CPU
provider runs the MLP activation as one Gelu kernel instead of five element-wise passes
(docs/benchmarks.md, section 6). Not in float16 graphs, where x (1 + erf) overflows for |x| > 32752.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
import onnxscript.rewriter
from onnxscript.rewriter import onnx_fusions, pattern

SKIPPED_RULES = frozenset({"SlicesSplit"})


def optimize(model: ir.Model) -> None:
    """Optimize ``model`` in place, as the torch exporter would, minus ``SKIPPED_RULES``."""
    rules = getattr(onnxscript.rewriter, "_DEFAULT_REWRITE_RULES", None)
    if rules is None:  # an onnxscript without that list: its own pipeline, whole
        onnxscript.optimizer.optimize_ir(model)
    else:
        kept = [rule for rule in rules if getattr(rule, "name", None) not in SKIPPED_RULES]
        _optimize_with_rules(model, kept)
    onnx_fusions.fuse(model)
    pattern.RewriteRuleSet([GELU_FOR_ONNXRUNTIME], commute=True).apply_to_model(model)


def _erf_gelu_exported(op, x, root2, one, half):
    return op.Mul(x, op.Mul(half, op.Add(op.Erf(op.Div(x, root2)), one)))


def _erf_gelu_fusable(op, x, root2, one, half):
    return op.Mul(op.Mul(x, op.Add(op.Erf(op.Div(x, root2)), one)), half)


def _scalar(value) -> float | None:
    constant = value.const_value
    return float(constant.numpy().reshape(())) if constant is not None and constant.numpy().size == 1 else None


def _is_exact_gelu(context, x, root2, one, half, **_) -> bool:
    """The exporter's exact GELU, and not in float16: there x (1 + erf) overflows for |x| > 32752
    where x (0.5 (1 + erf)) does not."""
    root = _scalar(root2)
    return (x.dtype != ir.DataType.FLOAT16 and _scalar(half) == 0.5 and _scalar(one) == 1.0
            and root is not None and abs(root - 2.0**0.5) <= 1e-6)


GELU_FOR_ONNXRUNTIME = pattern.RewriteRule(_erf_gelu_exported, _erf_gelu_fusable, _is_exact_gelu, name="GeluForOnnxRuntime")


def _optimize_with_rules(model: ir.Model, rules: list) -> None:
    """``onnxscript.optimizer.optimize_ir``'s passes, with these rewrite rules."""
    folding = onnxscript.optimizer.constant_folding
    iteration = ir.passes.PassManager(
        [
            folding.FoldConstantsPass(shape_inference=True, input_size_limit=folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                                      output_size_limit=folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT),
            onnxscript.rewriter.RewritePass(rules),
            common_passes.RemoveUnusedNodesPass(),
            common_passes.RemoveUnusedFunctionsPass(),
            common_passes.RemoveUnusedOpsetsPass(),
        ],
        steps=2,
        early_stop=True,
    )
    ir.passes.Sequential(
        common_passes.InlinePass(),
        iteration,
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )(model)
