/*
 * The PolyAggregate CPU kernel: what onnxruntime's custom op (polyAggregateOrtOp.cpp) runs.
 *
 * The decomposed graph makes eight passes over the (B, N, C) features (activation, clamp, five
 * for Horner's rule, the token mean); this kernel reads x once. A task takes a tile of up to
 * kTileTokens tokens (whole rows, or channel tiles when tasks would be few), evaluates each
 * token's features (v2 without RoPE in registers, else in a row buffer; loops over channels the
 * compiler vectorizes) and adds them to the tile's float32 sums; the tile sums are then added tile after tile, in token order. Causal modes write their
 * (B, N, C) output in a second pass. Tiles depend on the shapes only, so every thread count gives
 * the same bits. v1 and RoPE tiles span the whole row (their features pair channels far apart).
 */
// Float compares count as possibly trapping to GCC unless told otherwise, which keeps it from
// vectorizing the activation's selects (5x slower here); nothing here reads the floating-point
// exception flags. Before the includes, so that std::min and std::max get it too and inline.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "polyAggregateCommon.h"
#include "polyAggregateHostTensor.h"
#include "polyAggregateMath.cuh"

#include <algorithm>
#include <array>
#include <atomic>
#include <new>
#include <utility>
#include <vector>

// The hot loop is also compiled for AVX2 + FMA and picked at load time where the CPU has them
// (1.5x faster here than the SSE2 baseline every x86-64 has); other compilers and CPUs: baseline.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 // "arch=" needs GCC 11
#define POM_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define POM_CPU_CLONES
#endif

namespace pom
{
namespace
{

constexpr int64_t kTileTokens = 256;
// Whole token rows make the fastest tiles (contiguous reads, 1.5x faster here than 256-channel
// tiles at N = 4096); rows are cut into channel tiles only when there would be fewer than
// kMinTasks tasks, as for one 256-token chunk of a step graph. Channel tiles do not change any
// sum: each channel is still summed over the same tokens in the same order.
constexpr int64_t kMinTasks = 16;
constexpr int64_t kMinTileChannels = 64;

//! One call: the description, its tensors, the tiling and the scratch shared by the tasks.
struct Problem
{
    PomPolyAggregateDesc d;
    void const* x;
    void const* mask;
    void const* cos;
    void const* sin;
    void* y;
    int64_t tileChannels;    // channels of one tile
    int64_t channelTiles;    // tiles across C
    int64_t segmentTokens;   // tokens of a segment: a frame (block-causal) or the whole row
    int64_t tilesPerSegment; // token tiles of one segment (none crosses a frame)
    int64_t tokenTiles;      // token tiles of one batch row
    std::vector<float> coef;    // v2: (K, C), coefficient k of every channel contiguous
    std::vector<float> sums;    // (B, tokenTiles, C): each tile's sums (causal: its total)
    std::vector<float> weights; // masked: (B, tokenTiles) sums of the mask
    std::vector<float> carry;   // causal: (B, tokenTiles, C) total of the tiles before; frames: means
    std::vector<float> prefix;  // token-level causal, 16-bit y: (B, N, C) running sums of a tile
    std::atomic<bool> failed{false};

    int64_t frames() const { return d.frameTokens > 0 ? d.tokens / d.frameTokens : 1; }

    //! Token range [begin, end) of token tile t of a batch row.
    void tileTokens(int64_t t, int64_t& begin, int64_t& end) const
    {
        int64_t const segment = t / tilesPerSegment;
        begin = segment * segmentTokens + (t % tilesPerSegment) * kTileTokens;
        end = std::min(begin + kTileTokens, (segment + 1) * segmentTokens);
    }

    //! Where the running sums of token-level causal tiles go: y itself when it is float32.
    float* prefixRow(int64_t b, int64_t n)
    {
        float* base = d.dtype == POM_DTYPE_FLOAT32 ? static_cast<float*>(y) : prefix.data();
        return base + (b * d.tokens + n) * d.channels;
    }
};

inline float activation(float v)
{
    // v2Activation written so that the loop vectorizes (no branch, no fminf/fmaxf); NaN stays NaN.
    // leaky_relu(v) = max(v, slope v) for 0 < slope < 1: one multiply and one max per lane.
    float const leaky = std::max(v, kLeakySlope * v);
    return std::min(std::max(leaky, kClampMin), kClampMax);
}

//! x of channels [c0, c0 + width) of token n of batch row b as float32: in place for float32 x,
//! else widened into `row`.
float const* tokenRow(Problem const& p, int64_t b, int64_t n, int64_t c0, int64_t width, float* row)
{
    PomPolyAggregateDesc const& d = p.d;
    int64_t const offset = (b * d.tokens + n) * d.channels + c0;
    if (d.dtype == POM_DTYPE_FLOAT32)
    {
        return static_cast<float const*>(p.x) + offset;
    }
    Tensor const x{p.x, d.dtype};
    for (int64_t c = 0; c < width; ++c)
    {
        row[c] = x.at(offset + c);
    }
    return row;
}

//! Features of channels [c0, c0 + width) of token n of batch row b into feat (width floats);
//! `row` is scratch for C floats (16-bit x is widened there, v1 and RoPE work there).
void tokenFeatures(Problem const& p, int64_t b, int64_t n, int64_t c0, int64_t width, float* feat, float* row)
{
    PomPolyAggregateDesc const& d = p.d;
    float const* in = tokenRow(p, b, n, c0, width, row);
    if (d.variant == POM_VARIANT_V1)
    {
        int64_t const chunk = d.channels / d.degree;
        for (int64_t c = 0; c < width; ++c)
        {
            feat[c] = geluErf(in[c]);
        }
        for (int64_t c = chunk; c < width; ++c) // chunk j *= chunks 0..j-1, already multiplied
        {
            feat[c] *= feat[c - chunk];
        }
        return;
    }
    float* value = d.rope == POM_ROPE_NONE ? feat : row; // RoPE rotates from row into feat
    float* act = d.rope == POM_ROPE_NONE ? row : feat;
    for (int64_t c = 0; c < width; ++c)
    {
        act[c] = activation(in[c]);
    }
    for (int64_t c = 0; c < width; ++c)
    {
        value[c] = 0.0F;
    }
    for (int k = d.degree - 1; k >= 0; --k)
    {
        float const* coef = p.coef.data() + k * d.channels + c0;
        for (int64_t c = 0; c < width; ++c)
        {
            value[c] = (value[c] + coef[c]) * act[c];
        }
    }
    if (d.rope == POM_ROPE_NONE)
    {
        return;
    }
    Tensor const cosines{p.cos, sideDType(d)};
    Tensor const sines{p.sin, sideDType(d)};
    int64_t const pairs = d.channels / 2;
    int64_t const half = d.rope == POM_ROPE_1D ? pairs : d.channels / 4;
    int64_t const angles = ((d.ropePerBatch != 0 ? b : 0) * d.tokens + n) * pairs;
    for (int64_t pair = 0; pair < pairs; ++pair)
    {
        int64_t const first = pair / half * 2 * half + pair % half;
        float const cosine = cosines.at(angles + pair);
        float const sine = sines.at(angles + pair);
        feat[first] = fmaf(value[first], cosine, -(value[first + half] * sine));
        feat[first + half] = fmaf(value[first + half], cosine, value[first] * sine);
    }
}

//! sum[c] += weight * (v2 features of one token), channels [0, width), without RoPE: the hot
//! path, one loop over channels with the features in registers (K a template parameter, so
//! Horner's rule unrolls and the loop vectorizes). coef: coefficient k of channel c at k * stride + c.
template <int K, bool Weighted>
POM_CPU_CLONES void addV2Token(float const* __restrict in, float const* __restrict coef, int64_t stride, int64_t width, float weight,
    float* __restrict sum)
{
    for (int64_t c = 0; c < width; ++c)
    {
        float const a = activation(in[c]);
        // a (c_0 + a (c_1 + ... + a c_{K-1})): K - 1 multiply-adds (fused where the CPU has FMA) and a multiply.
        float value = coef[(K - 1) * stride + c];
        for (int k = K - 2; k >= 0; --k)
        {
            value = value * a + coef[k * stride + c];
        }
        sum[c] += (Weighted ? weight : 1.0F) * (value * a);
    }
}

using AddV2Token = void (*)(float const*, float const*, int64_t, int64_t, float, float*);

template <bool Weighted, int... K>
constexpr std::array<AddV2Token, sizeof...(K)> addV2Tokens(std::integer_sequence<int, K...>)
{
    return {&addV2Token<K + 1, Weighted>...};
}

//! addV2Token for degree K at [Weighted][K - 1].
constexpr std::array<std::array<AddV2Token, POM_MAX_DEGREE>, 2> kAddV2Token{
    addV2Tokens<false>(std::make_integer_sequence<int, POM_MAX_DEGREE>{}),
    addV2Tokens<true>(std::make_integer_sequence<int, POM_MAX_DEGREE>{})};

//! Pass 1, one (batch row, token tile, channel tile): the tile's sums; token-level causal also
//! writes each token's running sum within the tile.
void sumTile(void* data, size_t index)
{
    Problem& p = *static_cast<Problem*>(data);
    PomPolyAggregateDesc const& d = p.d;
    int64_t const channelTile = static_cast<int64_t>(index) % p.channelTiles;
    int64_t const tile = static_cast<int64_t>(index) / p.channelTiles % p.tokenTiles;
    int64_t const b = static_cast<int64_t>(index) / p.channelTiles / p.tokenTiles;
    int64_t const c0 = channelTile * p.tileChannels;
    int64_t const width = std::min(p.tileChannels, d.channels - c0);
    int64_t begin = 0;
    int64_t end = 0;
    p.tileTokens(tile, begin, end);
    try
    {
        std::vector<float> sum(width, 0.0F);
        std::vector<float> feat(width);
        std::vector<float> row(d.channels);
        Tensor const mask{p.mask, sideDType(d)};
        float weightSum = 0.0F;
        bool const chained = d.mode == POM_MODE_CAUSAL && d.frameTokens == 0;
        bool const fused = d.variant == POM_VARIANT_V2 && d.rope == POM_ROPE_NONE;
        bool const masked = d.mode == POM_MODE_MASKED;
        for (int64_t n = begin; n < end; ++n)
        {
            float const weight = masked ? mask.at(b * d.tokens + n) : 1.0F;
            weightSum += weight;
            if (fused)
            {
                float const* in = tokenRow(p, b, n, c0, width, row.data());
                kAddV2Token[masked][d.degree - 1](in, p.coef.data() + c0, d.channels, width, weight, sum.data());
            }
            else
            {
                tokenFeatures(p, b, n, c0, width, feat.data(), row.data());
                for (int64_t c = 0; c < width; ++c)
                {
                    sum[c] += masked ? weight * feat[c] : feat[c];
                }
            }
            if (chained)
            {
                std::copy(sum.begin(), sum.end(), p.prefixRow(b, n) + c0);
            }
        }
        std::copy(sum.begin(), sum.end(), p.sums.begin() + (b * p.tokenTiles + tile) * d.channels + c0);
        if (d.mode == POM_MODE_MASKED && channelTile == 0)
        {
            p.weights[b * p.tokenTiles + tile] = weightSum;
        }
    }
    catch (std::bad_alloc const&)
    {
        p.failed = true;
    }
}

//! Between the passes, serial and small: tile sums added in token order into the mean/masked
//! output, the causal carries (sum of the tiles before each tile) or the frames' prefix means.
void combineTiles(Problem& p)
{
    PomPolyAggregateDesc const& d = p.d;
    int64_t const channels = d.channels;
    std::vector<float> running(channels);
    for (int64_t b = 0; b < d.batch; ++b)
    {
        std::fill(running.begin(), running.end(), 0.0F);
        float weight = 0.0F;
        for (int64_t t = 0; t < p.tokenTiles; ++t)
        {
            float const* tile = p.sums.data() + (b * p.tokenTiles + t) * channels;
            if (d.mode == POM_MODE_CAUSAL && d.frameTokens == 0)
            {
                std::copy(running.begin(), running.end(), p.carry.begin() + (b * p.tokenTiles + t) * channels);
            }
            for (int64_t c = 0; c < channels; ++c)
            {
                running[c] += tile[c];
            }
            if (d.mode == POM_MODE_MASKED)
            {
                weight += p.weights[b * p.tokenTiles + t];
            }
            bool const frameDone = d.frameTokens > 0 && (t + 1) % p.tilesPerSegment == 0;
            if (frameDone) // the prefix mean of frames 0..g
            {
                int64_t const g = t / p.tilesPerSegment;
                float const count = static_cast<float>((g + 1) * d.frameTokens);
                float* mean = p.carry.data() + (b * p.frames() + g) * channels;
                for (int64_t c = 0; c < channels; ++c)
                {
                    mean[c] = running[c] / count;
                }
            }
        }
        if (d.mode == POM_MODE_MEAN || d.mode == POM_MODE_MASKED)
        {
            float const count = d.mode == POM_MODE_MEAN ? static_cast<float>(d.tokens) : weight;
            for (int64_t c = 0; c < channels; ++c)
            {
                store(p.y, d.dtype, b * channels + c, count != 0.0F ? running[c] / count : 0.0F);
            }
        }
    }
}

//! Pass 2 of the causal modes, one (batch row, token tile): write y for the tile's tokens.
void writeCausalTile(void* data, size_t index)
{
    Problem& p = *static_cast<Problem*>(data);
    PomPolyAggregateDesc const& d = p.d;
    int64_t const tile = static_cast<int64_t>(index) % p.tokenTiles;
    int64_t const b = static_cast<int64_t>(index) / p.tokenTiles;
    int64_t begin = 0;
    int64_t end = 0;
    p.tileTokens(tile, begin, end);
    float const* carry = p.carry.data() + (b * p.tokenTiles + tile) * d.channels;
    for (int64_t n = begin; n < end; ++n)
    {
        int64_t const out = (b * d.tokens + n) * d.channels;
        if (d.frameTokens > 0)
        {
            float const* mean = p.carry.data() + (b * p.frames() + n / d.frameTokens) * d.channels;
            for (int64_t c = 0; c < d.channels; ++c)
            {
                store(p.y, d.dtype, out + c, mean[c]);
            }
            continue;
        }
        float const* running = p.prefixRow(b, n);
        float const count = static_cast<float>(n + 1);
        for (int64_t c = 0; c < d.channels; ++c)
        {
            store(p.y, d.dtype, out + c, (carry[c] + running[c]) / count);
        }
    }
}

int runTasks(Problem& p, PomTask task, size_t count, PomParallelFor parallelFor, void* pool)
{
    if (count == 0)
    {
        return POM_SUCCESS;
    }
    if (parallelFor == nullptr)
    {
        for (size_t i = 0; i < count; ++i)
        {
            task(&p, i);
        }
    }
    else if (parallelFor(pool, task, &p, count) != 0)
    {
        return POM_ERROR_PARALLEL_FOR;
    }
    return p.failed ? POM_ERROR_OUT_OF_MEMORY : POM_SUCCESS;
}

int run(PomPolyAggregateDesc const& d, void const* x, void const* coeff, void const* mask, void const* cos,
    void const* sin, void* y, PomParallelFor parallelFor, void* pool)
{
    Problem p;
    p.d = d;
    p.x = x;
    p.mask = mask;
    p.cos = cos;
    p.sin = sin;
    p.y = y;
    p.segmentTokens = d.frameTokens > 0 ? d.frameTokens : d.tokens;
    p.tilesPerSegment = std::max<int64_t>(ceilDiv(p.segmentTokens, kTileTokens), 1);
    p.tokenTiles = d.tokens == 0 ? 0 : p.frames() * p.tilesPerSegment;
    bool const causal = d.mode == POM_MODE_CAUSAL;
    int64_t const rows = d.batch * p.tokenTiles;
    p.tileChannels = std::max<int64_t>(d.channels, 1);
    bool const channelTiled = d.variant == POM_VARIANT_V2 && d.rope == POM_ROPE_NONE; // v1, RoPE: whole rows
    if (channelTiled && rows > 0 && rows < kMinTasks)
    {
        int64_t const wanted = ceilDiv(d.channels, ceilDiv(kMinTasks, rows));
        p.tileChannels = std::min(p.tileChannels, std::max(kMinTileChannels, ceilDiv(wanted, 16) * 16));
    }
    p.channelTiles = ceilDiv(d.channels, p.tileChannels);
    p.coef.resize(d.variant == POM_VARIANT_V2 ? d.degree * d.channels : 0);
    Tensor const coefficients{coeff, sideDType(d)};
    for (int64_t c = 0; c < static_cast<int64_t>(p.coef.size()) / std::max(d.degree, 1); ++c)
    {
        for (int k = 0; k < d.degree; ++k)
        {
            p.coef[k * d.channels + c] = coefficients.at(c * d.degree + k);
        }
    }
    p.sums.resize(rows * d.channels);
    p.weights.resize(d.mode == POM_MODE_MASKED ? rows : 0);
    p.carry.resize(causal ? rows * d.channels : 0);
    p.prefix.resize(causal && d.frameTokens == 0 && d.dtype != POM_DTYPE_FLOAT32 ? d.batch * d.tokens * d.channels : 0);
    int status = runTasks(p, sumTile, static_cast<size_t>(rows * p.channelTiles), parallelFor, pool);
    if (status != POM_SUCCESS)
    {
        return status;
    }
    combineTiles(p);
    return causal ? runTasks(p, writeCausalTile, static_cast<size_t>(rows), parallelFor, pool) : POM_SUCCESS;
}

} // namespace
} // namespace pom

extern "C" POM_API int pomPolyAggregateValidate(PomPolyAggregateDesc const* desc)
{
    return pom::validateDescription(desc);
}

extern "C" POM_API char const* pomPolyAggregateStatusString(int status)
{
    char const* text = pom::statusText(status);
    return text != nullptr ? text : "unknown status";
}

extern "C" POM_API int pomPolyAggregateCpuKernel(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void const* cos, void const* sin, void* y, PomParallelFor parallelFor, void* pool)
{
    int const status = pom::validateDescription(desc);
    if (status != POM_SUCCESS)
    {
        return status;
    }
    if (desc->batch * desc->tokens * desc->channels == 0)
    {
        // Nothing to read (onnxruntime passes null for tensors without elements): mean and masked
        // outputs (B, 1, C) are zeros, causal outputs are empty.
        int64_t const outputs = desc->mode == POM_MODE_CAUSAL ? 0 : desc->batch * desc->channels;
        for (int64_t i = 0; i < outputs; ++i)
        {
            pom::store(y, desc->dtype, i, 0.0F);
        }
        return POM_SUCCESS;
    }
    if (x == nullptr || y == nullptr || !pom::inputsPresent(*desc, coeff, mask, cos, sin))
    {
        return POM_ERROR_MISSING_INPUT;
    }
    try
    {
        return pom::run(*desc, x, coeff, mask, cos, sin, y, parallelFor, pool);
    }
    catch (std::bad_alloc const&)
    {
        return POM_ERROR_OUT_OF_MEMORY;
    }
}
