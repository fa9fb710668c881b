/*
 * Test-only CPU emulation of the PolyAggregate CUDA kernels, for tests on machines without a GPU
 * (the shipped CPU kernel is plugins/poly_aggregate/polyAggregateCpuKernel.cpp).
 *
 * It follows the kernels' blocking (polyAggregateCommon.h) and evaluates the features with
 * the same source (polyAggregateMath.cuh), so every float32 sum happens in the kernels'
 * order: lanes interleave tokens, lanes are added in lane order, splits in split order (frame
 * after frame for block-causal), and causal chunks chain their carry. Columns are independent
 * in that order, so one column at a time (V = 1) reproduces any vector width. Only erfcf may
 * differ from the GPU's in the last bits.
 */
#include "polyAggregateCommon.h"
#include "polyAggregateHostTensor.h"
#include "polyAggregateMath.cuh"

#include <algorithm>
#include <cstring>
#include <vector>

namespace pom
{
namespace
{

constexpr int kCpuMaxK = POM_MAX_DEGREE;
using Column = float[kCpuMaxK][1];

//! Host tensors of one call.
struct Inputs
{
    void const* x;
    void const* coeff;
    void const* mask;
    void const* cos;
    void const* sin;
};

//! Channel m of column `col` (see Plan).
int64_t channelOf(Plan const& p, int64_t col, int m)
{
    return firstChannel(p, col) + m * p.channelStride;
}

//! Features of token n, column `col` of batch b: feat[j][0] for the K chunks (v1), the two
//! rotated channels of a pair (RoPE) or feat[0][0] (v2).
struct FeatureSource
{
    PomPolyAggregateDesc const& d;
    Plan const& plan;
    Tensor x;
    Tensor cos;
    Tensor sin;
    int64_t col;
    Column coef{};

    FeatureSource(PomPolyAggregateDesc const& desc, Plan const& p, Inputs const& in, int64_t column)
        : d(desc)
        , plan(p)
        , x{in.x, desc.dtype}
        , cos{in.cos, sideDType(desc)}
        , sin{in.sin, sideDType(desc)}
        , col(column)
    {
        if (d.variant == POM_VARIANT_V2)
        {
            Tensor const coeff{in.coeff, sideDType(d)};
            bool const rope = d.rope != POM_ROPE_NONE;
            for (int m = 0; m < (rope ? 2 : 1); ++m)
            {
                for (int k = 0; k < d.degree; ++k)
                {
                    // With RoPE the partners' coefficients go to rows [kCpuMaxK / 2, kCpuMaxK).
                    coef[m * (kCpuMaxK / 2) + k][0] = coeff.at(channelOf(p, col, m) * d.degree + k);
                }
            }
        }
    }

    void operator()(int64_t b, int64_t n, Column& feat) const
    {
        Column raw{};
        int64_t const row = (b * d.tokens + n) * d.channels;
        for (int j = 0; j < plan.channelsPerColumn; ++j)
        {
            raw[j][0] = x.at(row + channelOf(plan, col, j));
        }
        if (d.rope != POM_ROPE_NONE)
        {
            int64_t const angle = ((d.ropePerBatch != 0 ? b : 0) * d.tokens + n) * (d.channels / 2) + col;
            float const cosines[1] = {cos.at(angle)};
            float const sines[1] = {sin.at(angle)};
            rotatedPairFeatures<1, kCpuMaxK>(d.degree, raw, coef, cosines, sines, feat);
        }
        else
        {
            tokenFeatures<1, kCpuMaxK>(d.variant, d.degree, raw, coef, feat);
        }
    }
};

//! Block-causal after the reduction: splits added in split order, the running mean of each
//! frame's end given to all its tokens (frameScanKernel, frameBroadcastKernel).
void frameMeansCpu(PomPolyAggregateDesc const& d, Plan const& p, int64_t b, std::vector<float> const& partial, void* y)
{
    int64_t const frames = d.tokens / d.frameTokens;
    for (int64_t c = 0; c < d.channels; ++c)
    {
        float total = 0.0F;
        for (int64_t frame = 0; frame < frames; ++frame)
        {
            for (int64_t split = frame * p.splitsPerSegment; split < (frame + 1) * p.splitsPerSegment; ++split)
            {
                total += partial[split * d.channels + c];
            }
            float const mean = total / static_cast<float>((frame + 1) * d.frameTokens);
            for (int64_t n = frame * d.frameTokens; n < (frame + 1) * d.frameTokens; ++n)
            {
                store(y, d.dtype, (b * d.tokens + n) * d.channels + c, mean);
            }
        }
    }
}

void reduceCpu(PomPolyAggregateDesc const& d, Plan const& p, Inputs const& in, void* y)
{
    int const kAcc = p.channelsPerColumn;
    bool const masked = d.mode == POM_MODE_MASKED;
    Tensor const maskTensor{in.mask, sideDType(d)};
    std::vector<float> partial(static_cast<size_t>(p.splits * d.channels));
    std::vector<float> maskSums(static_cast<size_t>(p.splits));
    for (int64_t b = 0; b < d.batch; ++b)
    {
        for (int64_t col = 0; col < p.columns; ++col)
        {
            FeatureSource const features(d, p, in, col);
            for (int64_t split = 0; split < p.splits; ++split)
            {
                int64_t begin = 0;
                int64_t end = 0;
                splitTokens(p, split, begin, end);
                float total[kCpuMaxK] = {};
                float maskTotal = 0.0F;
                for (int lane = 0; lane < kBlockLanes; ++lane)
                {
                    float laneSum[kCpuMaxK] = {};
                    float laneMask = 0.0F;
                    for (int64_t n = begin + lane; n < end; n += kBlockLanes)
                    {
                        float const weight = masked ? maskTensor.at(b * d.tokens + n) : 1.0F;
                        laneMask += weight;
                        Column feat;
                        features(b, n, feat);
                        for (int j = 0; j < kAcc; ++j)
                        {
                            laneSum[j] = accumulate(laneSum[j], weight, feat[j][0]);
                        }
                    }
                    for (int j = 0; j < kAcc; ++j)
                    {
                        total[j] += laneSum[j];
                    }
                    maskTotal += laneMask;
                }
                for (int j = 0; j < kAcc; ++j)
                {
                    partial[split * d.channels + channelOf(p, col, j)] = total[j];
                }
                maskSums[split] = maskTotal;
            }
        }
        if (framed(d))
        {
            frameMeansCpu(d, p, b, partial, y);
            continue;
        }
        for (int64_t c = 0; c < d.channels; ++c)
        {
            float total = 0.0F;
            float weight = 0.0F;
            for (int64_t split = 0; split < p.splits; ++split)
            {
                total += partial[split * d.channels + c];
                weight += maskSums[split];
            }
            float out;
            if (masked)
            {
                out = weight != 0.0F ? total / weight : 0.0F;
            }
            else
            {
                out = total / static_cast<float>(d.tokens);
            }
            store(y, d.dtype, b * d.channels + c, out);
        }
    }
}

void causalCpu(PomPolyAggregateDesc const& d, Plan const& p, Inputs const& in, void* y)
{
    int const kAcc = p.channelsPerColumn;
    int constexpr R = kCausalTokensPerLane;
    for (int64_t b = 0; b < d.batch; ++b)
    {
        for (int64_t col = 0; col < p.columns; ++col)
        {
            FeatureSource const features(d, p, in, col);
            float carry[kCpuMaxK] = {}; // inclusive prefix of the previous chunk
            for (int64_t chunk = 0; chunk < p.splits; ++chunk)
            {
                Column feat[kBlockLanes][R] = {};
                float lanePrefix[kBlockLanes][kCpuMaxK] = {};
                float chunkTotal[kCpuMaxK] = {};
                for (int lane = 0; lane < kBlockLanes; ++lane)
                {
                    float laneSum[kCpuMaxK] = {};
                    for (int r = 0; r < R; ++r)
                    {
                        int64_t const n = chunk * kCausalChunkTokens + lane * R + r;
                        if (n < d.tokens)
                        {
                            features(b, n, feat[lane][r]);
                        }
                        for (int j = 0; j < kAcc; ++j)
                        {
                            laneSum[j] += feat[lane][r][j][0];
                        }
                    }
                    for (int j = 0; j < kAcc; ++j)
                    {
                        lanePrefix[lane][j] = chunkTotal[j];
                        chunkTotal[j] += laneSum[j];
                    }
                }
                for (int lane = 0; lane < kBlockLanes; ++lane)
                {
                    for (int j = 0; j < kAcc; ++j)
                    {
                        float running = carry[j] + lanePrefix[lane][j];
                        for (int r = 0; r < R; ++r)
                        {
                            int64_t const n = chunk * kCausalChunkTokens + lane * R + r;
                            if (n >= d.tokens)
                            {
                                break;
                            }
                            running += feat[lane][r][j][0];
                            store(y, d.dtype, (b * d.tokens + n) * d.channels + channelOf(p, col, j),
                                running / static_cast<float>(n + 1));
                        }
                    }
                }
                for (int j = 0; j < kAcc; ++j)
                {
                    carry[j] = carry[j] + chunkTotal[j];
                }
            }
        }
    }
}

} // namespace
} // namespace pom

extern "C" int pomPolyAggregateValidate(PomPolyAggregateDesc const* desc)
{
    return pom::validateDescription(desc);
}

extern "C" size_t pomPolyAggregateWorkspaceSize(PomPolyAggregateDesc const* desc)
{
    return pom::workspaceBytes(desc);
}

extern "C" char const* pomPolyAggregateStatusString(int status)
{
    char const* text = pom::statusText(status);
    return text != nullptr ? text : "CUDA error";
}

extern "C" int pomPolyAggregateCpuEmulation(
    PomPolyAggregateDesc const* desc, void const* x, void const* coeff, void const* mask, void* y)
{
    return pomPolyAggregateCpuEmulationEx(desc, x, coeff, mask, nullptr, nullptr, y);
}

extern "C" int pomPolyAggregateCpuEmulationEx(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void const* cos, void const* sin, void* y)
{
    using namespace pom;
    int const status = pomPolyAggregateValidate(desc);
    if (status != POM_SUCCESS)
    {
        return status;
    }
    PomPolyAggregateDesc const& d = *desc;
    if (!inputsPresent(d, coeff, mask, cos, sin))
    {
        return POM_ERROR_MISSING_INPUT;
    }
    if (d.batch == 0 || d.channels == 0)
    {
        return POM_SUCCESS;
    }
    if (d.tokens == 0)
    {
        if (d.mode != POM_MODE_CAUSAL)
        {
            std::memset(y, 0, static_cast<size_t>(d.batch * d.channels * dtypeBytes(d.dtype)));
        }
        return POM_SUCCESS;
    }
    Plan const plan = makePlan(d, 1);
    Inputs const in{x, coeff, mask, cos, sin};
    if (chained(d))
    {
        causalCpu(d, plan, in, y);
    }
    else
    {
        reduceCpu(d, plan, in, y);
    }
    return POM_SUCCESS;
}
