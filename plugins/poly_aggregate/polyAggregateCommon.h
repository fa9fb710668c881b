/*
 * Blocking plan of the PolyAggregate kernels, shared by the CUDA launcher and the CPU
 * emulation so that both split the work -- and therefore order the float32 sums -- the
 * same way. The plan depends on shapes only (never on the GPU model), so results are
 * bit-identical across runs and devices.
 */
#ifndef POM_POLY_AGGREGATE_COMMON_H
#define POM_POLY_AGGREGATE_COMMON_H

#include "polyAggregate.h"

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define POM_HD_INLINE __host__ __device__ __forceinline__
#else
#define POM_HD_INLINE inline
#endif

namespace pom
{

// Tuning constants. Each can be overridden at compile time (-DPOM_BLOCK_LANES=64, ...) for the
// kernels and the CPU emulation alike; scripts/gpu_check.sh builds a few such variants and
// benchmarks them side by side. The defaults have not been tuned on a GPU yet.
#ifndef POM_BLOCK_COLS
#define POM_BLOCK_COLS 8
#endif
#ifndef POM_BLOCK_LANES
#define POM_BLOCK_LANES 32
#endif
#ifndef POM_REDUCE_TOKENS_PER_SPLIT
#define POM_REDUCE_TOKENS_PER_SPLIT 256
#endif
#ifndef POM_CAUSAL_TOKENS_PER_LANE
#define POM_CAUSAL_TOKENS_PER_LANE 4
#endif
// causal: 0 chains each chunk's carry to the next; 1 lets a chunk look back over its
// predecessors' published totals (same sums, same order: bit-identical results).
#ifndef POM_CAUSAL_LOOKBACK
#define POM_CAUSAL_LOOKBACK 0
#endif

// A block is kBlockCols column groups x kBlockLanes token lanes.
constexpr int kBlockCols = POM_BLOCK_COLS;
constexpr int kBlockLanes = POM_BLOCK_LANES;
constexpr int kBlockThreads = kBlockCols * kBlockLanes;
// mean/masked: tokens handled by one block before the cross-block (second stage) sum.
constexpr int64_t kReduceTokensPerSplit = POM_REDUCE_TOKENS_PER_SPLIT;
// causal: consecutive tokens one thread keeps in registers; a chunk is lanes x this.
constexpr int kCausalTokensPerLane = POM_CAUSAL_TOKENS_PER_LANE;
constexpr int64_t kCausalChunkTokens = int64_t{kBlockLanes} * kCausalTokensPerLane;
constexpr bool kCausalLookback = POM_CAUSAL_LOOKBACK != 0;
// Per-thread float32 accumulators (features of V channels x K chunks); bounds registers. At
// V = 1 a thread holds all K <= POM_MAX_DEGREE chunks, so this is not a tuning knob.
constexpr int kMaxAccumulators = POM_MAX_DEGREE;
static_assert(kBlockThreads <= 1024, "a CUDA block has at most 1024 threads");
// The lane sums and the causal scan give one thread to each (column group, accumulator).
static_assert(kBlockThreads >= kBlockCols * kMaxAccumulators, "too few threads for the lane sums");
static_assert(kReduceTokensPerSplit >= kBlockLanes && kCausalTokensPerLane >= 1, "bad token blocking");
constexpr int kMaxVecBytes = 16;
// RoPE kernels are instantiated for V <= 4 only: 2 K V coefficients must fit the budget anyway
// (V = 8 would mean K = 1), and fewer instantiations keep the build time.
constexpr int kMaxRopeVec = 4;
constexpr size_t kWorkspaceAlign = 256;

inline int dtypeBytes(int32_t dtype)
{
    return dtype == POM_DTYPE_FLOAT32 ? 4 : 2;
}

//! PomDType of the side inputs coeff, mask, cos and sin: float32 when the description says so,
//! else x's dtype.
inline int32_t sideDType(PomPolyAggregateDesc const& d)
{
    return d.sideInputsFloat32 != 0 ? POM_DTYPE_FLOAT32 : d.dtype;
}

inline int validate(PomPolyAggregateDesc const& d)
{
    if (d.batch < 0 || d.tokens < 0 || d.channels < 0)
    {
        return POM_ERROR_BAD_SHAPE;
    }
    if (d.degree < 1 || d.degree > POM_MAX_DEGREE)
    {
        return POM_ERROR_BAD_DEGREE;
    }
    if (d.variant != POM_VARIANT_V1 && d.variant != POM_VARIANT_V2)
    {
        return POM_ERROR_BAD_VARIANT;
    }
    if (d.mode != POM_MODE_MEAN && d.mode != POM_MODE_CAUSAL && d.mode != POM_MODE_MASKED)
    {
        return POM_ERROR_BAD_MODE;
    }
    if (d.dtype != POM_DTYPE_FLOAT32 && d.dtype != POM_DTYPE_FLOAT16 && d.dtype != POM_DTYPE_BFLOAT16)
    {
        return POM_ERROR_BAD_DTYPE;
    }
    if (d.sideInputsFloat32 != 0 && d.sideInputsFloat32 != 1)
    {
        return POM_ERROR_BAD_SIDE_DTYPE;
    }
    if (d.variant == POM_VARIANT_V1 && d.channels % d.degree != 0)
    {
        return POM_ERROR_CHANNELS_NOT_DIVISIBLE;
    }
    if (d.rope != POM_ROPE_NONE && d.rope != POM_ROPE_1D && d.rope != POM_ROPE_2D)
    {
        return POM_ERROR_BAD_ROPE;
    }
    if (d.rope != POM_ROPE_NONE && (d.variant != POM_VARIANT_V2 || d.degree > POM_MAX_ROPE_DEGREE))
    {
        return POM_ERROR_ROPE_UNSUPPORTED;
    }
    if (d.channels % (d.rope == POM_ROPE_2D ? 4 : d.rope == POM_ROPE_1D ? 2 : 1) != 0)
    {
        return POM_ERROR_ROPE_CHANNELS;
    }
    if (d.frameTokens < 0 || (d.frameTokens > 0 && d.mode != POM_MODE_CAUSAL))
    {
        return POM_ERROR_BAD_FRAME_TOKENS;
    }
    if (d.frameTokens > 0 && d.tokens % d.frameTokens != 0)
    {
        return POM_ERROR_TOKENS_NOT_FRAME_MULTIPLE;
    }
    return POM_SUCCESS;
}

//! pomPolyAggregateValidate, for the CUDA and the CPU library alike.
inline int validateDescription(PomPolyAggregateDesc const* desc)
{
    return desc == nullptr ? POM_ERROR_BAD_SHAPE : validate(*desc);
}

//! Whether the inputs the description needs were given (coeff, mask, cos and sin may be null otherwise).
inline bool inputsPresent(PomPolyAggregateDesc const& d, void const* coeff, void const* mask, void const* cos, void const* sin)
{
    return (d.variant != POM_VARIANT_V2 || coeff != nullptr) && (d.mode != POM_MODE_MASKED || mask != nullptr)
        && (d.rope == POM_ROPE_NONE || (cos != nullptr && sin != nullptr));
}

inline char const* statusText(int status)
{
    switch (status)
    {
    case POM_SUCCESS: return "success";
    case POM_ERROR_BAD_SHAPE: return "negative batch, tokens or channels";
    case POM_ERROR_BAD_DEGREE: return "degree must be in [1, 16]";
    case POM_ERROR_BAD_VARIANT: return "variant must be v1 or v2";
    case POM_ERROR_BAD_MODE: return "mode must be mean, causal or masked";
    case POM_ERROR_BAD_DTYPE: return "dtype must be float32, float16 or bfloat16";
    case POM_ERROR_MISSING_INPUT: return "v2 needs coeff, masked needs mask, rope needs cos and sin";
    case POM_ERROR_WORKSPACE_TOO_SMALL: return "workspace smaller than pomPolyAggregateWorkspaceSize()";
    case POM_ERROR_CHANNELS_NOT_DIVISIBLE: return "v1 needs channels divisible by degree";
    case POM_ERROR_BAD_ROPE: return "rope must be none, 1d or 2d";
    case POM_ERROR_ROPE_CHANNELS: return "rope 1d needs channels divisible by 2, rope 2d by 4";
    case POM_ERROR_ROPE_UNSUPPORTED: return "rope needs variant v2 and degree <= 8";
    case POM_ERROR_BAD_FRAME_TOKENS: return "frame_tokens must be >= 0, and > 0 only with mode causal";
    case POM_ERROR_TOKENS_NOT_FRAME_MULTIPLE: return "tokens must be a multiple of frame_tokens";
    case POM_ERROR_OUT_OF_MEMORY: return "out of host memory for the CPU kernel's scratch";
    case POM_ERROR_PARALLEL_FOR: return "the parallel loop given to the CPU kernel failed";
    case POM_ERROR_BAD_SIDE_DTYPE: return "sideInputsFloat32 must be 0 (side inputs in dtype) or 1 (float32)";
    default: return nullptr;
    }
}

inline int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

inline size_t alignUp(size_t bytes)
{
    return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

//! Block-causal (frames of F tokens): a segmented reduction per frame, a scan over frames and a
//! broadcast, instead of the token-level causal chain.
inline bool framed(PomPolyAggregateDesc const& d)
{
    return d.mode == POM_MODE_CAUSAL && d.frameTokens > 0;
}

//! Token-level causal: the single-pass kernel with chained carries.
inline bool chained(PomPolyAggregateDesc const& d)
{
    return d.mode == POM_MODE_CAUSAL && d.frameTokens == 0;
}

//! How one launch is cut into blocks. A thread owns `vec` consecutive columns ("a group") and
//! every channel of them. v1: columns are the Cc = C / K indices i, channels j * Cc + i (all K
//! chunks); v2: columns are the C channels; v2 with RoPE: columns are the C/2 rotation pairs,
//! channels a(p) and a(p) + H (docs/poly_aggregate.md), so x is read once and a thread rotates
//! its own pairs. Columns come in runs of `channelStride` (H); column col's channel m is
//! firstChannel(col) + m * H.
struct Plan
{
    int vec;                  // V: columns per thread, loaded as one vector
    int channelsPerColumn;    // K for v1 (one output per chunk), 2 with RoPE (a pair), else 1
    int64_t columns;          // Cc (v1), C/2 (RoPE) or C (v2)
    int64_t channelStride;    // H: Cc (v1), C/2 (RoPE 1d), C/4 (RoPE 2d), C (v2)
    int64_t groups;           // columns / V
    int64_t colTiles;         // blocks across the groups of one batch row
    int64_t splits;           // token blocks: reduce splits (mean/masked/frames) or scan chunks (causal)
    int64_t tokensPerSplit;
    int64_t segmentTokens;    // reduce: tokens summed apart, N (mean/masked) or F (one frame)
    int64_t splitsPerSegment; // reduce: splits of one segment
    int64_t chains;           // causal: independent carry chains, batch x colTiles
};

inline int64_t planColumns(PomPolyAggregateDesc const& d)
{
    if (d.rope != POM_ROPE_NONE)
    {
        return d.channels / 2;
    }
    return d.variant == POM_VARIANT_V1 ? d.channels / d.degree : d.channels;
}

inline int64_t planChannelStride(PomPolyAggregateDesc const& d)
{
    switch (d.rope)
    {
    case POM_ROPE_1D: return d.channels / 2;
    case POM_ROPE_2D: return d.channels / 4;
    default: return planColumns(d);
    }
}

inline int planChannelsPerColumn(PomPolyAggregateDesc const& d)
{
    if (d.rope != POM_ROPE_NONE)
    {
        return 2;
    }
    return d.variant == POM_VARIANT_V1 ? d.degree : 1;
}

//! Tokens of one reduce segment, and how many segments a batch row has.
inline int64_t segmentTokens(PomPolyAggregateDesc const& d)
{
    return framed(d) ? d.frameTokens : d.tokens;
}

inline int64_t planSplits(PomPolyAggregateDesc const& d)
{
    if (d.tokens == 0)
    {
        return 0;
    }
    if (chained(d))
    {
        return ceilDiv(d.tokens, kCausalChunkTokens);
    }
    return d.tokens / segmentTokens(d) * ceilDiv(segmentTokens(d), kReduceTokensPerSplit);
}

//! Whether `vec` columns per thread is possible: fits a 16-byte load (x's, and the RoPE tables'
//! in their own dtype), divides the runs of columns, and keeps the thread's float32 registers
//! (v1: K x V features; v2: K x V coefficients, twice with RoPE) within the accumulator budget.
inline bool vecFits(PomPolyAggregateDesc const& d, int vec)
{
    bool const rope = d.rope != POM_ROPE_NONE;
    return vec * dtypeBytes(d.dtype) <= kMaxVecBytes && planColumns(d) % vec == 0
        && planChannelStride(d) % vec == 0 && d.degree * vec * (rope ? 2 : 1) <= kMaxAccumulators
        && (!rope || (vec <= kMaxRopeVec && vec * dtypeBytes(sideDType(d)) <= kMaxVecBytes));
}

//! Widest vector allowed by shapes and by the alignments: `dataAlignedBytes`, the largest power
//! of two dividing every address of x (and y) the vector loads/stores touch, and
//! `tableAlignedBytes`, the same for the RoPE tables (read in sideDType, so their vectors are
//! 4 V bytes when they are float32 under a 16-bit x); ignored without RoPE.
inline int chooseVec(PomPolyAggregateDesc const& d, int dataAlignedBytes, int tableAlignedBytes)
{
    bool const rope = d.rope != POM_ROPE_NONE;
    for (int vec = 8; vec > 1; vec /= 2)
    {
        if (vecFits(d, vec) && dataAlignedBytes % (vec * dtypeBytes(d.dtype)) == 0
            && (!rope || tableAlignedBytes % (vec * dtypeBytes(sideDType(d))) == 0))
        {
            return vec;
        }
    }
    return 1;
}

inline Plan makePlan(PomPolyAggregateDesc const& d, int vec)
{
    Plan p{};
    p.vec = vec;
    p.channelsPerColumn = planChannelsPerColumn(d);
    p.columns = planColumns(d);
    p.channelStride = planChannelStride(d);
    p.groups = p.columns / vec;
    p.colTiles = ceilDiv(p.groups, kBlockCols);
    p.splits = planSplits(d);
    p.tokensPerSplit = chained(d) ? kCausalChunkTokens : kReduceTokensPerSplit;
    p.segmentTokens = segmentTokens(d);
    p.splitsPerSegment = d.tokens == 0 ? 0 : ceilDiv(p.segmentTokens, kReduceTokensPerSplit);
    p.chains = d.batch * p.colTiles;
    return p;
}

//! Channel of the first of a column's channels (see Plan).
POM_HD_INLINE int64_t firstChannel(Plan const& p, int64_t column)
{
    return column / p.channelStride * p.channelsPerColumn * p.channelStride + column % p.channelStride;
}

//! Token range [begin, end) of a reduce split: splits cut each segment (all N tokens, or one
//! frame) into kReduceTokensPerSplit pieces, so no split crosses a frame boundary.
POM_HD_INLINE void splitTokens(Plan const& p, int64_t split, int64_t& begin, int64_t& end)
{
    int64_t const segment = split / p.splitsPerSegment;
    int64_t const segmentEnd = (segment + 1) * p.segmentTokens;
    begin = segment * p.segmentTokens + split % p.splitsPerSegment * p.tokensPerSplit;
    end = begin + p.tokensPerSplit < segmentEnd ? begin + p.tokensPerSplit : segmentEnd;
}

//! Workspace layout. mean/masked/block-causal: partial sums [B][splits][C], then mask sums
//! [B][splits] (masked) or frame means [B][frames][C] (block-causal). causal: ready flags
//! [chains][splits] and the block ticket (zeroed before each launch), then inclusive prefixes
//! [chains][splits][kBlockCols * V * K], and with the look-back the chunk totals in the same
//! layout. Sized for the worst vector width.
struct WorkspaceLayout
{
    size_t partialBytes;
    size_t maskSumOffset;
    size_t frameMeanOffset; // block-causal only
    size_t flagsBytes; // flags + ticket: the region cleared before a causal launch
    size_t prefixOffset;
    size_t chunkTotalOffset; // look-back only
    size_t totalBytes;
};

inline WorkspaceLayout workspaceLayout(PomPolyAggregateDesc const& d)
{
    WorkspaceLayout w{};
    int64_t const splits = planSplits(d);
    if (chained(d))
    {
        Plan const scalar = makePlan(d, 1); // V = 1 has the most chains
        int64_t const kAcc = scalar.channelsPerColumn;
        w.flagsBytes = sizeof(int32_t) * static_cast<size_t>(scalar.chains * splits + 1);
        w.prefixOffset = alignUp(w.flagsBytes);
        // chains(V) * kBlockCols * V <= B * (columns + kBlockCols * 8) for every V <= 8.
        size_t const prefixFloats
            = static_cast<size_t>(d.batch * (scalar.columns + kBlockCols * 8) * kAcc * splits);
        size_t const prefixBytes = alignUp(sizeof(float) * prefixFloats);
        w.chunkTotalOffset = w.prefixOffset + prefixBytes;
        w.totalBytes = w.chunkTotalOffset + (kCausalLookback ? prefixBytes : 0);
    }
    else
    {
        w.partialBytes = sizeof(float) * static_cast<size_t>(d.batch * splits * d.channels);
        w.maskSumOffset = alignUp(w.partialBytes);
        w.frameMeanOffset = w.maskSumOffset;
        if (framed(d))
        {
            int64_t const frames = d.tokens / d.frameTokens;
            w.totalBytes = w.frameMeanOffset + alignUp(sizeof(float) * static_cast<size_t>(d.batch * frames * d.channels));
        }
        else
        {
            w.totalBytes = w.maskSumOffset + alignUp(sizeof(float) * static_cast<size_t>(d.batch * splits));
        }
    }
    return w;
}

//! pomPolyAggregateWorkspaceSize: 0 for a description that does not validate.
inline size_t workspaceBytes(PomPolyAggregateDesc const* desc)
{
    return validateDescription(desc) == POM_SUCCESS ? workspaceLayout(*desc).totalBytes : 0;
}

} // namespace pom

#endif // POM_POLY_AGGREGATE_COMMON_H
