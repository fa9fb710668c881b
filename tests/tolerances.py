"""Every tolerance of the suite that compares two floating-point implementations, each derived
from a worst-case error bound that any correct implementation meets on any CPU and thread count.

Float32 (Higham, Accuracy and Stability of Numerical Algorithms, ch. 3): a result that went
through a chain of at most L float32 roundings (dot products and sums of any order, blocking or
thread count; element-wise ops) is within gamma_L * M of the exact value, where
gamma_L = L u / (1 - L u), u = 2^-24, and M is the sum of the magnitudes of the terms involved
(|w| |x| for a dot product). Two implementations are within twice that of each other.
L below is counted from the test models' sizes; M from their magnitudes: activations after
LayerNorm and unit-normal inputs keep each sum of |terms| within 4 times the output's scale.

The PolyAggregate op has its own elementwise bound, pom_deploy.ops.poly_aggregate.error_bound.
"""

from __future__ import annotations

from pom_deploy.ops.poly_aggregate import OUTPUT_ROUNDOFF, gamma  # u = 2^-24 and Higham's gamma_n, defined once

FLOAT16_ROUNDOFF = OUTPUT_ROUNDOFF["float16"]
MAGNITUDE = 4.0  # M: sums of |terms| relative to the output's scale (see above)


def between_two_float32(roundings: int) -> float:
    """|a - b| for two float32 implementations of a chain of ``roundings``, scale 1."""
    return 2.0 * float(gamma(roundings)) * MAGNITUDE


# One upstream-sized layer (dim <= 32, expand <= 2, degree <= 5, <= 16 tokens): input GEMM (32),
# features (3K + 1 = 16), token sum (16), output GEMM (64), selection GEMM (32): L = 160.
# Outputs reach 296 (v2_d5_e1_h8): relative and absolute parts, as np.testing's allclose.
UPSTREAM = dict(rtol=between_two_float32(160), atol=between_two_float32(160))

# One test layer exported to ONNX (dim 16, expand 2, degree <= 3, <= 300 tokens): input GEMM (16),
# features (10), token sum (300), output and selection GEMMs (32 + 16): L = 374, outputs <= 1.
LAYER_ATOL = between_two_float32(374)

# The zoo's test models (dim 32, depth 2, mlp_ratio <= 4, <= 248 tokens) per block: LayerNorm (32),
# mixer GEMMs (32 + 64), features (7), token sum (248), FFN GEMMs (32 + 128), modulation (32);
# two blocks, patch/token embedding (16) and head (32): L = 2 * 575 + 48 = 1198, outputs <= 1.
MODEL_ATOL = between_two_float32(1198)

# The user-style models (tests/user_models.py: dim 16, two blocks, MLP 2x, <= 64 tokens, vocabulary
# 50, 4x4x3 patches) per block: LayerNorm (16), mixer GEMMs (16 + 32), features (10), token sum (64),
# MLP GEMMs (16 + 32); two blocks, embedding or patches (48) and head (16): L = 2 * 186 + 64 = 436.
# Logits exceed 1: relative to the output's peak (at least 1).
USER_MODEL_RELATIVE_TO_PEAK = between_two_float32(436)

# fp16 graphs (onnxruntime rounds every tensor to float16 between ops): along the longest path
# of the test models about 20 float16 roundings, each within FLOAT16_ROUNDOFF of the value,
# which stays within the output's peak: error <= 20 * 2^-11 = 0.98% of the peak.
FP16_RELATIVE_TO_PEAK = 20 * FLOAT16_ROUNDOFF
