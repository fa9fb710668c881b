/*
 * PolyAggregate CUDA kernels and their C ABI (polyAggregate.h).
 *
 * mean / masked: each block sums kReduceTokensPerSplit tokens of kBlockCols column groups
 * (lanes interleave tokens, then the lanes are added in lane order), writes float32 partial
 * sums to the workspace, and a finalize kernel adds the splits in split order and divides.
 * Block-causal (frames of F tokens): the same reduction with splits that never cross a frame,
 * then a scan kernel adds the splits in order and records the running mean at each frame's
 * end, and a broadcast kernel writes it to every token of the frame.
 * RoPE: a thread owns rotation pairs (both channels of each), so x is read once and each
 * token's features are rotated in registers before they are summed.
 * causal: single pass. A block takes a chunk of kCausalChunkTokens tokens, keeps their
 * features in registers, scans them, and chains its carry to the next chunk through the
 * workspace: chunk c waits for chunk c-1's inclusive prefix, so the sums are always added in
 * the same order (deterministic). With POM_CAUSAL_LOOKBACK a chunk publishes its total at
 * once and, when its predecessor has no prefix yet, adds the totals back to the nearest
 * published prefix -- forward from that prefix, so the float32 additions are the chain's, in
 * the chain's order (unlike a decoupled look-back that adds backwards). Blocks take their
 * chunk from an atomic ticket, so a chunk's predecessors have always started and waiting
 * cannot deadlock. x is read once and y written once.
 */
#include "polyAggregateCommon.h"
#include "polyAggregateMath.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <initializer_list>

namespace pom
{
namespace
{

// What a causal chunk has published in the workspace's ready flags.
constexpr int32_t kTotalPublished = 1;  // look-back only: its chunk total
constexpr int32_t kPrefixPublished = 2; // its inclusive prefix

// Two resident blocks per SM (<= 128 registers a thread) keep enough loads in flight.
#ifndef POM_MIN_BLOCKS_PER_SM
#define POM_MIN_BLOCKS_PER_SM 2
#endif
constexpr int kMinBlocksPerSm = POM_MIN_BLOCKS_PER_SM;

template <typename T>
struct Convert;

template <>
struct Convert<float>
{
    static __device__ __forceinline__ float toFloat(float v)
    {
        return v;
    }
    static __device__ __forceinline__ float fromFloat(float v)
    {
        return v;
    }
};

template <>
struct Convert<__half>
{
    static __device__ __forceinline__ float toFloat(__half v)
    {
        return __half2float(v);
    }
    static __device__ __forceinline__ __half fromFloat(float v)
    {
        return __float2half_rn(v);
    }
};

template <>
struct Convert<__nv_bfloat16>
{
    static __device__ __forceinline__ float toFloat(__nv_bfloat16 v)
    {
        return __bfloat162float(v);
    }
    static __device__ __forceinline__ __nv_bfloat16 fromFloat(float v)
    {
        return __float2bfloat16_rn(v);
    }
};

//! Unsigned type of a vector of `Bytes` bytes: V elements move as one memory instruction.
template <int Bytes>
struct RawVec;
template <>
struct RawVec<2>
{
    using type = unsigned short;
};
template <>
struct RawVec<4>
{
    using type = unsigned int;
};
template <>
struct RawVec<8>
{
    using type = uint2;
};
template <>
struct RawVec<16>
{
    using type = uint4;
};

//! Streaming (.cs) for x, read once; cached in L2 (.cg) for the RoPE tables, which every
//! batch row reads again when they are shared.
template <typename T, int V, bool kStreaming = true>
__device__ __forceinline__ void loadVec(T const* src, float (&dst)[V])
{
    using Raw = typename RawVec<sizeof(T) * V>::type;
    Raw const raw = kStreaming ? __ldcs(reinterpret_cast<Raw const*>(src)) : __ldcg(reinterpret_cast<Raw const*>(src));
    T values[V];
    memcpy(values, &raw, sizeof(raw));
#pragma unroll
    for (int v = 0; v < V; ++v)
    {
        dst[v] = Convert<T>::toFloat(values[v]);
    }
}

//! Bits of one element, for packing stores into 32-bit words.
__device__ __forceinline__ uint32_t elementBits(float v)
{
    return __float_as_uint(v);
}
__device__ __forceinline__ uint32_t elementBits(__half v)
{
    return __half_as_ushort(v);
}
__device__ __forceinline__ uint32_t elementBits(__nv_bfloat16 v)
{
    return __bfloat16_as_ushort(v);
}

template <typename T, int V>
__device__ __forceinline__ void storeVec(T* dst, float const (&src)[V])
{
    // Packed into 32-bit words and written with the vector store intrinsics: a plain
    // struct store gets split into scalar stores. Streaming (.cs): y is not read again.
    constexpr int kBytes = sizeof(T) * V;
    constexpr int kElementsPerWord = sizeof(T) == 2 ? 2 : 1;
    uint32_t words[kBytes >= 4 ? kBytes / 4 : 1] = {};
#pragma unroll
    for (int v = 0; v < V; ++v)
    {
        uint32_t const bits = elementBits(Convert<T>::fromFloat(src[v]));
        words[v / kElementsPerWord] |= bits << (16 * (v % kElementsPerWord));
    }
    if constexpr (kBytes == 16)
    {
        __stcs(reinterpret_cast<uint4*>(dst), make_uint4(words[0], words[1], words[2], words[3]));
    }
    else if constexpr (kBytes == 8)
    {
        __stcs(reinterpret_cast<uint2*>(dst), make_uint2(words[0], words[1]));
    }
    else if constexpr (kBytes == 4)
    {
        __stcs(reinterpret_cast<unsigned int*>(dst), words[0]);
    }
    else
    {
        __stcs(reinterpret_cast<unsigned short*>(dst), static_cast<unsigned short>(words[0]));
    }
}

struct KernelArgs
{
    void const* x;
    void const* coeff;
    void const* mask;
    void const* cos; // RoPE: (B or 1, N, C/2)
    void const* sin;
    void* y;
    int64_t tokens;
    int64_t channels;
    int64_t frameTokens;
    int32_t degree;
    int32_t variant;
    int32_t mode;
    int32_t rope;
    int32_t ropePerBatch;
    int32_t sideFloat32; // coeff, mask, cos and sin are float32 whatever T is (sideInputsFloat32)
    Plan plan;
    float* partial;    // mean/masked/block-causal: [B][splits][C]
    float* maskSums;   // masked: [B][splits]
    float* frameMeans; // block-causal: [B][frames][C]
    uint32_t* ticket;  // causal: block ticket counter (zeroed per launch)
    int32_t* ready;    // causal: [chains * splits] what each chunk has published (zeroed per launch)
    float* prefix;     // causal: [chains * splits][kBlockCols * V * K] inclusive prefixes
    float* chunkTotal; // causal look-back: chunk totals, same layout
};

//! Element i of a side input (coeff, mask): float32 or T as the launch says. The branch is
//! uniform over the whole launch, so it costs no divergence and no kernel instantiations.
template <typename T>
__device__ __forceinline__ float sideAt(KernelArgs const& a, void const* side, int64_t i)
{
    return a.sideFloat32 ? static_cast<float const*>(side)[i] : Convert<T>::toFloat(static_cast<T const*>(side)[i]);
}

//! V consecutive entries of a RoPE table (cos or sin), cached in L2, in its own dtype.
template <typename T, int V>
__device__ __forceinline__ void loadTable(KernelArgs const& a, void const* table, int64_t i, float (&dst)[V])
{
    if (a.sideFloat32)
    {
        loadVec<float, V, false>(static_cast<float const*>(table) + i, dst);
    }
    else
    {
        loadVec<T, V, false>(static_cast<T const*>(table) + i, dst);
    }
}

//! Coefficients of the thread's V channels for v2 (zeros for v1), held in registers. With
//! RoPE, rows [0, MAXK/2) hold the pairs' first channels' and rows [MAXK/2, MAXK) the partners'.
template <typename T, int V, int MAXK, bool kRope>
__device__ __forceinline__ void loadCoefficients(
    KernelArgs const& a, int64_t first, bool active, float (&coef)[MAXK][V])
{
#pragma unroll
    for (int k = 0; k < MAXK; ++k)
    {
        int const member = kRope ? k / (MAXK / 2) : 0;
        int const power = kRope ? k % (MAXK / 2) : k;
#pragma unroll
        for (int v = 0; v < V; ++v)
        {
            bool const used = active && a.variant == POM_VARIANT_V2 && power < a.degree;
            int64_t const channel = first + member * a.plan.channelStride + v;
            coef[k][v] = used ? sideAt<T>(a, a.coeff, channel * a.degree + power) : 0.0F;
        }
    }
}

//! Features of token n of batch row b for the thread's V columns, whose first channel is
//! `first` (all K chunks for v1; both channels of each pair, rotated, with RoPE).
template <typename T, int V, int MAXK, bool kRope>
__device__ __forceinline__ void featuresAt(KernelArgs const& a, int64_t b, int64_t n, int64_t first, int64_t col0,
    float const (&coef)[MAXK][V], float (&feat)[MAXK][V])
{
    T const* row = static_cast<T const*>(a.x) + (b * a.tokens + n) * a.channels + first;
    float raw[MAXK][V];
#pragma unroll
    for (int j = 0; j < MAXK; ++j)
    {
        if (j < a.plan.channelsPerColumn)
        {
            loadVec<T, V>(row + j * a.plan.channelStride, raw[j]);
        }
    }
    if constexpr (kRope)
    {
        int64_t const angles = ((a.ropePerBatch ? b : 0) * a.tokens + n) * (a.channels / 2) + col0;
        float cosines[V];
        float sines[V];
        loadTable<T, V>(a, a.cos, angles, cosines);
        loadTable<T, V>(a, a.sin, angles, sines);
        rotatedPairFeatures<V, MAXK>(a.degree, raw, coef, cosines, sines, feat);
    }
    else
    {
        tokenFeatures<V, MAXK>(a.variant, a.degree, raw, coef, feat);
    }
}

//! First channel of the columns from col0 on: col0 itself without RoPE (spares the division).
template <bool kRope>
__device__ __forceinline__ int64_t firstChannelOf(Plan const& p, int64_t col0)
{
    return kRope ? firstChannel(p, col0) : col0;
}

//! Output channel of accumulator `acc` (= channel of the column * V + v) of column group `group`.
template <bool kRope>
__device__ __forceinline__ int64_t channelOf(Plan const& p, int64_t group, int acc)
{
    return firstChannelOf<kRope>(p, group * p.vec) + acc / p.vec * p.channelStride + acc % p.vec;
}

//! Per-lane values in shared memory (lane sums, lane prefixes) are laid out [accumulator][lane]
//! [column group], each accumulator's slab padded so that it starts kBlockCols banks after the
//! previous one (mod 32). A warp writing one accumulator for its lanes and columns, and a warp
//! adding the lanes of its columns for consecutive accumulators, then each touch 32 distinct
//! banks; the [lane][column][accumulator] layout put a warp's 32 words in 2 banks (16-way).
constexpr int kLaneSlab = kBlockLanes * kBlockCols + ((kBlockCols - kBlockLanes * kBlockCols % 32) % 32 + 32) % 32;
static_assert(kBlockCols >= 32 || kLaneSlab % 32 == kBlockCols, "lane slabs must start kBlockCols banks apart");

__device__ __forceinline__ int laneSlot(int acc, int lane, int col)
{
    return acc * kLaneSlab + lane * kBlockCols + col;
}

//! kRope: a compile-time switch, so that the kernels without RoPE keep their registers.
template <typename T, int V, bool kRope>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm) reduceKernel(KernelArgs a)
{
    constexpr int MAXK = kMaxAccumulators / V;
    __shared__ float laneSums[kMaxAccumulators * kLaneSlab];
    __shared__ float laneMaskSums[kBlockLanes];

    Plan const& p = a.plan;
    int const tx = threadIdx.x;
    int const ty = threadIdx.y;
    int64_t const tile = blockIdx.x % p.colTiles;
    int64_t const split = (blockIdx.x / p.colTiles) % p.splits;
    int64_t const b = blockIdx.x / (p.colTiles * p.splits);
    int64_t const group = tile * kBlockCols + tx;
    bool const active = group < p.groups;
    int64_t const col0 = group * V;
    int64_t const first = firstChannelOf<kRope>(p, col0);
    int const nbAcc = p.channelsPerColumn * V;
    bool const masked = a.mode == POM_MODE_MASKED;

    float coef[MAXK][V];
    loadCoefficients<T, V, MAXK, kRope>(a, first, active, coef);

    float sum[MAXK][V] = {};
    float maskSum = 0.0F;
    int64_t const maskRow = b * a.tokens;
    int64_t begin = 0;
    int64_t end = 0;
    splitTokens(p, split, begin, end);
#pragma unroll 2
    for (int64_t n = begin + ty; n < end; n += kBlockLanes)
    {
        float const weight = masked ? sideAt<T>(a, a.mask, maskRow + n) : 1.0F;
        maskSum += weight;
        if (active)
        {
            float feat[MAXK][V];
            featuresAt<T, V, MAXK, kRope>(a, b, n, first, col0, coef, feat);
#pragma unroll
            for (int j = 0; j < MAXK; ++j)
            {
#pragma unroll
                for (int v = 0; v < V; ++v)
                {
                    if (j < p.channelsPerColumn)
                    {
                        sum[j][v] = accumulate(sum[j][v], weight, feat[j][v]);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int j = 0; j < MAXK; ++j)
    {
#pragma unroll
        for (int v = 0; v < V; ++v)
        {
            if (j < p.channelsPerColumn)
            {
                laneSums[laneSlot(j * V + v, ty, tx)] = sum[j][v];
            }
        }
    }
    if (tx == 0)
    {
        laneMaskSums[ty] = maskSum;
    }
    __syncthreads();

    // Lanes are added in lane order: one thread per (column group, accumulator).
    int const tid = ty * kBlockCols + tx;
    int const sumCol = tid % kBlockCols;
    int const sumAcc = tid / kBlockCols;
    int64_t const sumGroup = tile * kBlockCols + sumCol;
    if (sumAcc < nbAcc && sumGroup < p.groups)
    {
        float total = 0.0F;
        for (int lane = 0; lane < kBlockLanes; ++lane)
        {
            total += laneSums[laneSlot(sumAcc, lane, sumCol)];
        }
        a.partial[(b * p.splits + split) * a.channels + channelOf<kRope>(p, sumGroup, sumAcc)] = total;
    }
    if (masked && tile == 0 && tid == 0)
    {
        float total = 0.0F;
        for (int lane = 0; lane < kBlockLanes; ++lane)
        {
            total += laneMaskSums[lane];
        }
        a.maskSums[b * p.splits + split] = total;
    }
}

//! Second stage of mean/masked: adds the splits in split order, then normalizes.
template <typename T>
__global__ void finalizeKernel(KernelArgs a, int64_t batch)
{
    int64_t const i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= batch * a.channels)
    {
        return;
    }
    int64_t const b = i / a.channels;
    int64_t const c = i % a.channels;
    int64_t const splits = a.plan.splits;
    float total = 0.0F;
    for (int64_t s = 0; s < splits; ++s)
    {
        total += a.partial[(b * splits + s) * a.channels + c];
    }
    float out;
    if (a.mode == POM_MODE_MASKED)
    {
        float weight = 0.0F;
        for (int64_t s = 0; s < splits; ++s)
        {
            weight += a.maskSums[b * splits + s];
        }
        out = weight != 0.0F ? total / weight : 0.0F;
    }
    else
    {
        out = total / static_cast<float>(a.tokens);
    }
    static_cast<T*>(a.y)[i] = Convert<T>::fromFloat(out);
}

//! Block-causal, second stage: per (batch row, channel), adds the splits in split order (frame
//! after frame) and records the running mean at the end of each frame.
__global__ void frameScanKernel(KernelArgs a, int64_t batch)
{
    int64_t const i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= batch * a.channels)
    {
        return;
    }
    int64_t const b = i / a.channels;
    int64_t const c = i % a.channels;
    Plan const& p = a.plan;
    int64_t const frames = a.tokens / a.frameTokens;
    float total = 0.0F;
    for (int64_t frame = 0; frame < frames; ++frame)
    {
        for (int64_t s = frame * p.splitsPerSegment; s < (frame + 1) * p.splitsPerSegment; ++s)
        {
            total += a.partial[(b * p.splits + s) * a.channels + c];
        }
        a.frameMeans[(b * frames + frame) * a.channels + c] = total / static_cast<float>((frame + 1) * a.frameTokens);
    }
}

//! Block-causal, third stage: every token gets its frame's mean; one thread writes V channels
//! of one token with one vector store, so y is written once at full width.
template <typename T, int V>
__global__ void frameBroadcastKernel(KernelArgs a, int64_t batch)
{
    int64_t const vectorsPerToken = a.channels / V;
    int64_t const i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= batch * a.tokens * vectorsPerToken)
    {
        return;
    }
    int64_t const token = i / vectorsPerToken; // b * N + n
    int64_t const c0 = i % vectorsPerToken * V;
    int64_t const b = token / a.tokens;
    int64_t const frame = token % a.tokens / a.frameTokens;
    float const* mean = a.frameMeans + (b * (a.tokens / a.frameTokens) + frame) * a.channels + c0;
    float out[V];
#pragma unroll
    for (int v = 0; v < V; ++v)
    {
        out[v] = mean[v];
    }
    storeVec<T, V>(static_cast<T*>(a.y) + token * a.channels + c0, out);
}

template <typename T, int V, bool kRope>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm) causalKernel(KernelArgs a)
{
    constexpr int MAXK = kMaxAccumulators / V;
    constexpr int R = kCausalTokensPerLane;
    __shared__ uint32_t blockTicket;
    __shared__ float lanePrefix[kMaxAccumulators * kLaneSlab];
    __shared__ float chunkCarry[kMaxAccumulators][kBlockCols]; // [accumulator][column]: no conflicts either
    __shared__ int64_t lookBackBase; // ticket of the nearest predecessor with a prefix

    Plan const& p = a.plan;
    int const tx = threadIdx.x;
    int const ty = threadIdx.y;
    int const tid = ty * kBlockCols + tx;
    if (tid == 0)
    {
        blockTicket = atomicAdd(a.ticket, 1U);
    }
    __syncthreads();
    // Chunk-major tickets: every chain's chunk c is handed out before any chunk c + 1.
    int64_t const ticket = blockTicket;
    int64_t const chain = ticket % p.chains;
    int64_t const chunk = ticket / p.chains;
    int64_t const b = chain / p.colTiles;
    int64_t const tile = chain % p.colTiles;
    int64_t const group = tile * kBlockCols + tx;
    bool const active = group < p.groups;
    int64_t const col0 = group * V;
    int64_t const firstChannelOfGroup = firstChannelOf<kRope>(p, col0);
    int const nbAcc = p.channelsPerColumn * V;

    float coef[MAXK][V];
    loadCoefficients<T, V, MAXK, kRope>(a, firstChannelOfGroup, active, coef);

    // Phase 1: features of this lane's R consecutive tokens stay in registers.
    int64_t const first = chunk * kCausalChunkTokens + ty * R;
    float feat[R][MAXK][V];
    float running[MAXK][V] = {};
#pragma unroll
    for (int r = 0; r < R; ++r)
    {
        int64_t const n = first + r;
        if (active && n < a.tokens)
        {
            featuresAt<T, V, MAXK, kRope>(a, b, n, firstChannelOfGroup, col0, coef, feat[r]);
        }
        else
        {
#pragma unroll
            for (int j = 0; j < MAXK; ++j)
            {
#pragma unroll
                for (int v = 0; v < V; ++v)
                {
                    feat[r][j][v] = 0.0F;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < MAXK; ++j)
        {
#pragma unroll
            for (int v = 0; v < V; ++v)
            {
                if (j < p.channelsPerColumn)
                {
                    running[j][v] += feat[r][j][v];
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < MAXK; ++j)
    {
#pragma unroll
        for (int v = 0; v < V; ++v)
        {
            if (j < p.channelsPerColumn)
            {
                lanePrefix[laneSlot(j * V + v, ty, tx)] = running[j][v];
            }
        }
    }
    __syncthreads();

    // Phase 2: exclusive scan over lanes (in lane order), then the chained carry.
    int const scanCol = tid % kBlockCols;
    int const scanAcc = tid / kBlockCols;
    bool const scans = scanAcc < nbAcc;
    float chunkTotal = 0.0F;
    if (scans)
    {
        for (int lane = 0; lane < kBlockLanes; ++lane)
        {
            float const laneTotal = lanePrefix[laneSlot(scanAcc, lane, scanCol)];
            lanePrefix[laneSlot(scanAcc, lane, scanCol)] = chunkTotal;
            chunkTotal += laneTotal;
        }
    }
    int64_t const prefixStride = kBlockCols * nbAcc;
    int64_t const slot = scanCol * nbAcc + scanAcc;
    if constexpr (kCausalLookback)
    {
        // Publish at once: chunk 0 its prefix, later chunks their total.
        if (scans)
        {
            float* const published = chunk == 0 ? a.prefix : a.chunkTotal;
            __stcg(published + ticket * prefixStride + slot, chunk == 0 ? 0.0F + chunkTotal : chunkTotal);
            __threadfence();
        }
        __syncthreads();
        if (tid == 0)
        {
            atomicExch(a.ready + ticket, chunk == 0 ? kPrefixPublished : kTotalPublished);
            if (chunk > 0)
            {
                // Back to the nearest predecessor with a prefix (chunk 0 always has one).
                int64_t base = ticket - p.chains;
                int32_t status = 0;
                while ((status = *static_cast<int32_t const volatile*>(a.ready + base)) != kPrefixPublished)
                {
                    if (status == kTotalPublished)
                    {
                        base -= p.chains;
                    }
                    else
                    {
                        __nanosleep(64);
                    }
                }
                __threadfence();
                lookBackBase = base;
            }
        }
        __syncthreads();
        if (scans)
        {
            float carry = 0.0F;
            if (chunk > 0)
            {
                carry = __ldcg(a.prefix + lookBackBase * prefixStride + slot);
                for (int64_t j = lookBackBase + p.chains; j < ticket; j += p.chains)
                {
                    carry += __ldcg(a.chunkTotal + j * prefixStride + slot);
                }
                __stcg(a.prefix + ticket * prefixStride + slot, carry + chunkTotal);
                __threadfence();
            }
            chunkCarry[scanAcc][scanCol] = carry;
        }
        __syncthreads();
        if (tid == 0 && chunk > 0)
        {
            atomicExch(a.ready + ticket, kPrefixPublished);
        }
    }
    else
    {
        if (tid == 0 && chunk > 0)
        {
            int32_t const volatile* predecessorReady = a.ready + (ticket - p.chains);
            while (*predecessorReady != kPrefixPublished)
            {
                __nanosleep(64);
            }
            __threadfence();
        }
        __syncthreads();
        if (scans)
        {
            float const carry = chunk > 0 ? __ldcg(a.prefix + (ticket - p.chains) * prefixStride + slot) : 0.0F;
            __stcg(a.prefix + ticket * prefixStride + slot, carry + chunkTotal);
            chunkCarry[scanAcc][scanCol] = carry;
            __threadfence();
        }
        __syncthreads();
        if (tid == 0)
        {
            atomicExch(a.ready + ticket, kPrefixPublished);
        }
    }

    // Phase 3: prefix means of this lane's tokens.
    if (!active)
    {
        return;
    }
#pragma unroll
    for (int j = 0; j < MAXK; ++j)
    {
#pragma unroll
        for (int v = 0; v < V; ++v)
        {
            if (j < p.channelsPerColumn)
            {
                running[j][v] = chunkCarry[j * V + v][tx] + lanePrefix[laneSlot(j * V + v, ty, tx)];
            }
        }
    }
    T* y = static_cast<T*>(a.y) + b * a.tokens * a.channels;
#pragma unroll
    for (int r = 0; r < R; ++r)
    {
        int64_t const n = first + r;
        if (n >= a.tokens)
        {
            break;
        }
        float const count = static_cast<float>(n + 1);
#pragma unroll
        for (int j = 0; j < MAXK; ++j)
        {
            if (j < p.channelsPerColumn)
            {
                float out[V];
#pragma unroll
                for (int v = 0; v < V; ++v)
                {
                    running[j][v] += feat[r][j][v];
                    out[v] = running[j][v] / count;
                }
                storeVec<T, V>(y + n * a.channels + firstChannelOfGroup + j * p.channelStride, out);
            }
        }
    }
}

//! Largest power of two (capped at 16) dividing every address given (null ones ignored).
int alignmentOf(std::initializer_list<void const*> addresses)
{
    uintptr_t bits = kMaxVecBytes;
    for (void const* address : addresses)
    {
        bits |= reinterpret_cast<uintptr_t>(address);
    }
    return static_cast<int>(bits & (~bits + 1));
}

//! Launch configuration of one kernel. Launches go through cudaLaunchKernelEx rather than
//! <<<...>>> so that the host emulation (plugins/tests/cuda_host) compiles this file unchanged.
cudaLaunchConfig_t launchConfig(int64_t blocks, dim3 block, cudaStream_t stream)
{
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(static_cast<unsigned>(blocks));
    config.blockDim = block;
    config.stream = stream;
    return config;
}

template <typename T, int V, bool kRope>
cudaError_t launchPlanned(KernelArgs a, int64_t batch, cudaStream_t stream)
{
    Plan const& p = a.plan;
    int64_t const blocks = batch * p.colTiles * p.splits;
    if (blocks > INT_MAX)
    {
        return cudaErrorInvalidConfiguration;
    }
    cudaLaunchConfig_t const main = launchConfig(blocks, dim3(kBlockCols, kBlockLanes), stream);
    if (a.mode == POM_MODE_CAUSAL && a.frameTokens == 0)
    {
        return cudaLaunchKernelEx(&main, causalKernel<T, V, kRope>, a);
    }
    cudaError_t const reduced = cudaLaunchKernelEx(&main, reduceKernel<T, V, kRope>, a);
    if (reduced != cudaSuccess)
    {
        return reduced;
    }
    int constexpr kFinalizeThreads = 256;
    cudaLaunchConfig_t const finalize
        = launchConfig(ceilDiv(batch * a.channels, kFinalizeThreads), dim3(kFinalizeThreads), stream);
    if (a.mode != POM_MODE_CAUSAL)
    {
        return cudaLaunchKernelEx(&finalize, finalizeKernel<T>, a, batch);
    }
    cudaError_t const scanned = cudaLaunchKernelEx(&finalize, frameScanKernel, a, batch);
    if (scanned != cudaSuccess)
    {
        return scanned;
    }
    int64_t const broadcastBlocks = ceilDiv(batch * a.tokens * (a.channels / V), kFinalizeThreads);
    if (broadcastBlocks > INT_MAX)
    {
        return cudaErrorInvalidConfiguration;
    }
    cudaLaunchConfig_t const broadcast = launchConfig(broadcastBlocks, dim3(kFinalizeThreads), stream);
    return cudaLaunchKernelEx(&broadcast, frameBroadcastKernel<T, V>, a, batch);
}

template <typename T>
cudaError_t launchTyped(KernelArgs const& a, int64_t batch, cudaStream_t stream)
{
    if (a.rope != POM_ROPE_NONE)
    {
        switch (a.plan.vec) // at most kMaxRopeVec
        {
        case 4: return launchPlanned<T, 4, true>(a, batch, stream);
        case 2: return launchPlanned<T, 2, true>(a, batch, stream);
        case 1: return launchPlanned<T, 1, true>(a, batch, stream);
        default: return cudaErrorInvalidValue;
        }
    }
    switch (a.plan.vec)
    {
    case 8:
        if constexpr (sizeof(T) == 2)
        {
            return launchPlanned<T, 8, false>(a, batch, stream);
        }
        return cudaErrorInvalidValue;
    case 4: return launchPlanned<T, 4, false>(a, batch, stream);
    case 2: return launchPlanned<T, 2, false>(a, batch, stream);
    default: return launchPlanned<T, 1, false>(a, batch, stream);
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
    return text != nullptr ? text : cudaGetErrorString(static_cast<cudaError_t>(status));
}

extern "C" int pomPolyAggregateLaunch(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void* y, void* workspace, size_t workspaceBytes, void* stream)
{
    return pomPolyAggregateLaunchEx(desc, x, coeff, mask, nullptr, nullptr, y, workspace, workspaceBytes, stream);
}

extern "C" int pomPolyAggregateLaunchEx(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void const* cos, void const* sin, void* y, void* workspace, size_t workspaceBytes, void* stream)
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
    WorkspaceLayout const layout = workspaceLayout(d);
    if (workspaceBytes < layout.totalBytes)
    {
        return POM_ERROR_WORKSPACE_TOO_SMALL;
    }
    auto const cudaStream = static_cast<cudaStream_t>(stream);
    if (d.batch == 0 || d.channels == 0)
    {
        return POM_SUCCESS;
    }
    if (d.tokens == 0)
    {
        // Empty mean/masked: 0, like masked's empty-mask rule; causal output is empty.
        size_t const outBytes = d.mode == POM_MODE_CAUSAL ? 0 : d.batch * d.channels * dtypeBytes(d.dtype);
        return static_cast<int>(cudaMemsetAsync(y, 0, outBytes, cudaStream));
    }

    // Causal (block-causal too) writes y with vector stores, and RoPE loads the tables as
    // vectors (in their own dtype, so their alignment is checked apart); mean/masked outputs
    // are written per element.
    int const dataAligned = alignmentOf({x, d.mode == POM_MODE_CAUSAL ? y : x});
    int const tableAligned = alignmentOf({cos, sin});
    KernelArgs a{};
    a.x = x;
    a.coeff = coeff;
    a.mask = mask;
    a.cos = cos;
    a.sin = sin;
    a.y = y;
    a.tokens = d.tokens;
    a.channels = d.channels;
    a.frameTokens = d.frameTokens;
    a.degree = d.degree;
    a.variant = d.variant;
    a.mode = d.mode;
    a.rope = d.rope;
    a.ropePerBatch = d.ropePerBatch != 0 ? 1 : 0;
    a.sideFloat32 = d.sideInputsFloat32;
    a.plan = makePlan(d, chooseVec(d, dataAligned, tableAligned));
    auto* base = static_cast<unsigned char*>(workspace);
    if (chained(d))
    {
        a.ticket = reinterpret_cast<uint32_t*>(base);
        a.ready = reinterpret_cast<int32_t*>(base) + 1;
        a.prefix = reinterpret_cast<float*>(base + layout.prefixOffset);
        a.chunkTotal = reinterpret_cast<float*>(base + layout.chunkTotalOffset);
        cudaError_t const cleared = cudaMemsetAsync(workspace, 0, layout.flagsBytes, cudaStream);
        if (cleared != cudaSuccess)
        {
            return static_cast<int>(cleared);
        }
    }
    else
    {
        a.partial = reinterpret_cast<float*>(base);
        a.maskSums = reinterpret_cast<float*>(base + layout.maskSumOffset);
        a.frameMeans = reinterpret_cast<float*>(base + layout.frameMeanOffset);
    }

    cudaError_t err = cudaErrorInvalidValue;
    switch (d.dtype)
    {
    case POM_DTYPE_FLOAT32: err = launchTyped<float>(a, d.batch, cudaStream); break;
    case POM_DTYPE_FLOAT16: err = launchTyped<__half>(a, d.batch, cudaStream); break;
    case POM_DTYPE_BFLOAT16: err = launchTyped<__nv_bfloat16>(a, d.batch, cudaStream); break;
    }
    return static_cast<int>(err);
}
