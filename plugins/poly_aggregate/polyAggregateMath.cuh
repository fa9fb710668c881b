/*
 * Per-token PolyAggregate features, compiled for the GPU kernels (nvcc) and for the CPU
 * emulation (g++) from this one source so both evaluate the same float32 formulas.
 */
#ifndef POM_POLY_AGGREGATE_MATH_CUH
#define POM_POLY_AGGREGATE_MATH_CUH

#include "polyAggregate.h"

#if defined(__CUDACC__)
#define POM_HD __host__ __device__ __forceinline__
#define POM_UNROLL _Pragma("unroll")
#else
#include <cmath>
#define POM_HD inline
#define POM_UNROLL
#endif

namespace pom
{

constexpr float kLeakySlope = 0.01F;
constexpr float kClampMin = -0.1F;
constexpr float kClampMax = 6.0F;
constexpr float kInvSqrt2 = 0.70710678118654752F;

//! Exact (erf) GELU, as torch.nn.functional.gelu(approximate="none"). Written with erfc,
//! 1 + erf(t) = erfc(-t), to avoid float32 cancellation for negative x.
POM_HD float geluErf(float x)
{
    return 0.5F * x * erfcf(-x * kInvSqrt2);
}

//! v2 activation: clamp(leaky_relu(x, 0.01), -0.1, 6). Written with comparisons, not
//! fmaxf/fminf, which return the other operand for a NaN: a NaN in x stays NaN, as in the
//! oracle and the ONNX function body (Clip).
POM_HD float v2Activation(float x)
{
    float const leaky = x >= 0.0F ? x : kLeakySlope * x;
    return leaky < kClampMin ? kClampMin : (leaky > kClampMax ? kClampMax : leaky);
}

//! Features of one token for V columns.
//! v1: raw[j][v] is x of chunk j; feat[j][v] = g_0 * ... * g_j with g = GELU(x).
//! v2: raw[0][v] is x; feat[0][v] = sum_k coef[k][v] a^(k+1) by Horner, a = v2Activation(x).
//! MAXK bounds the unrolled loops (registers); `degree` <= MAXK is the runtime K.
template <int V, int MAXK>
POM_HD void tokenFeatures(
    int variant, int degree, float const (&raw)[MAXK][V], float const (&coef)[MAXK][V], float (&feat)[MAXK][V])
{
    if (variant == POM_VARIANT_V1)
    {
POM_UNROLL
        for (int v = 0; v < V; ++v)
        {
            float product = 1.0F;
POM_UNROLL
            for (int j = 0; j < MAXK; ++j)
            {
                if (j < degree)
                {
                    product *= geluErf(raw[j][v]);
                    feat[j][v] = product;
                }
            }
        }
    }
    else
    {
POM_UNROLL
        for (int v = 0; v < V; ++v)
        {
            float const a = v2Activation(raw[0][v]);
            float acc = 0.0F;
POM_UNROLL
            for (int k = MAXK - 1; k >= 0; --k)
            {
                if (k < degree)
                {
                    acc = (acc + coef[k][v]) * a;
                }
            }
            feat[0][v] = acc;
        }
    }
}

//! v2 features of V rotation pairs, rotated (RoPE). raw[0][v] is x of a pair's first channel,
//! raw[1][v] of its partner; coefficient rows [0, MAXK/2) are the first channels', rows
//! [MAXK/2, MAXK) the partners' (so degree <= MAXK/2). feat[0][v] = f_a cos - f_b sin,
//! feat[1][v] = f_b cos + f_a sin.
template <int V, int MAXK>
POM_HD void rotatedPairFeatures(int degree, float const (&raw)[MAXK][V], float const (&coef)[MAXK][V],
    float const (&cosines)[V], float const (&sines)[V], float (&feat)[MAXK][V])
{
    static_assert(MAXK >= 2, "a pair needs two coefficient sets");
    constexpr int kHalf = MAXK / 2;
POM_UNROLL
    for (int v = 0; v < V; ++v)
    {
        float pair[2];
POM_UNROLL
        for (int m = 0; m < 2; ++m)
        {
            float const a = v2Activation(raw[m][v]);
            float acc = 0.0F;
POM_UNROLL
            for (int k = kHalf - 1; k >= 0; --k)
            {
                if (k < degree)
                {
                    acc = (acc + coef[m * kHalf + k][v]) * a;
                }
            }
            pair[m] = acc;
        }
        // One explicit FMA each: nvcc would contract a*b - c*d on its own, g++ would not.
        feat[0][v] = fmaf(pair[0], cosines[v], -(pair[1] * sines[v]));
        feat[1][v] = fmaf(pair[1], cosines[v], pair[0] * sines[v]);
    }
}

//! One accumulation step; fmaf keeps the GPU and the CPU emulation on the same rounding
//! (nvcc would contract weight * f + sum into an FMA anyway).
POM_HD float accumulate(float sum, float weight, float feature)
{
    return fmaf(weight, feature, sum);
}

} // namespace pom

#endif // POM_POLY_AGGREGATE_MATH_CUH
