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
constexpr size_t kWorkspaceAlign = 256;

inline int dtypeBytes(int32_t dtype)
{
    return dtype == POM_DTYPE_FLOAT32 ? 4 : 2;
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
    if (d.variant == POM_VARIANT_V1 && d.channels % d.degree != 0)
    {
        return POM_ERROR_CHANNELS_NOT_DIVISIBLE;
    }
    return POM_SUCCESS;
}

//! pomPolyAggregateValidate, for the CUDA and the CPU library alike.
inline int validateDescription(PomPolyAggregateDesc const* desc)
{
    return desc == nullptr ? POM_ERROR_BAD_SHAPE : validate(*desc);
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
    case POM_ERROR_MISSING_INPUT: return "v2 needs coeff and masked needs mask";
    case POM_ERROR_WORKSPACE_TOO_SMALL: return "workspace smaller than pomPolyAggregateWorkspaceSize()";
    case POM_ERROR_CHANNELS_NOT_DIVISIBLE: return "v1 needs channels divisible by degree";
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

//! How one launch is cut into blocks. A thread owns `vec` consecutive columns ("a group").
//! v1: columns are the Cc = C / K indices i, and the thread produces all K chunk channels
//! j * Cc + i; v2: columns are the C channels.
struct Plan
{
    int vec;               // V: columns per thread, loaded as one vector
    int chunksPerColumn;   // K for v1 (one output per chunk), 1 for v2
    int64_t columns;       // Cc (v1) or C (v2)
    int64_t groups;        // columns / V
    int64_t colTiles;      // blocks across the groups of one batch row
    int64_t splits;        // token blocks: reduce splits (mean/masked) or scan chunks (causal)
    int64_t tokensPerSplit;
    int64_t chains;        // causal: independent carry chains, batch x colTiles
};

inline int64_t planColumns(PomPolyAggregateDesc const& d)
{
    return d.variant == POM_VARIANT_V1 ? d.channels / d.degree : d.channels;
}

inline int64_t planSplits(PomPolyAggregateDesc const& d)
{
    int64_t const perSplit = d.mode == POM_MODE_CAUSAL ? kCausalChunkTokens : kReduceTokensPerSplit;
    return d.tokens == 0 ? 0 : ceilDiv(d.tokens, perSplit);
}

//! Whether `vec` columns per thread is possible: fits a 16-byte load, divides the columns,
//! and keeps K x V (v1 features or v2 coefficients) within the accumulator budget.
inline bool vecFits(PomPolyAggregateDesc const& d, int vec)
{
    return vec * dtypeBytes(d.dtype) <= kMaxVecBytes && planColumns(d) % vec == 0
        && d.degree * vec <= kMaxAccumulators;
}

//! Widest vector allowed by shapes and by `alignedBytes`, the largest power of two that
//! divides every tensor address the vector loads/stores touch.
inline int chooseVec(PomPolyAggregateDesc const& d, int alignedBytes)
{
    for (int vec = 8; vec > 1; vec /= 2)
    {
        if (vecFits(d, vec) && alignedBytes % (vec * dtypeBytes(d.dtype)) == 0)
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
    p.chunksPerColumn = d.variant == POM_VARIANT_V1 ? d.degree : 1;
    p.columns = planColumns(d);
    p.groups = p.columns / vec;
    p.colTiles = ceilDiv(p.groups, kBlockCols);
    p.splits = planSplits(d);
    p.tokensPerSplit = d.mode == POM_MODE_CAUSAL ? kCausalChunkTokens : kReduceTokensPerSplit;
    p.chains = d.batch * p.colTiles;
    return p;
}

//! Workspace layout. mean/masked: partial sums [B][splits][C] then mask sums [B][splits].
//! causal: ready flags [chains][splits] and the block ticket (zeroed before each launch), then
//! inclusive prefixes [chains][splits][kBlockCols * V * K], and with the look-back the chunk
//! totals in the same layout. Sized for the worst vector width.
struct WorkspaceLayout
{
    size_t partialBytes;
    size_t maskSumOffset;
    size_t flagsBytes; // flags + ticket: the region cleared before a causal launch
    size_t prefixOffset;
    size_t chunkTotalOffset; // look-back only
    size_t totalBytes;
};

inline WorkspaceLayout workspaceLayout(PomPolyAggregateDesc const& d)
{
    WorkspaceLayout w{};
    int64_t const splits = planSplits(d);
    if (d.mode == POM_MODE_CAUSAL)
    {
        Plan const scalar = makePlan(d, 1); // V = 1 has the most chains
        int64_t const kAcc = scalar.chunksPerColumn;
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
        w.totalBytes = w.maskSumOffset + alignUp(sizeof(float) * static_cast<size_t>(d.batch * splits));
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
