/*
 * C ABI of the PolyAggregate kernels (see docs/poly_aggregate.md for the math).
 *
 * Used by the TensorRT plugin, by tests and benchmarks through ctypes, and by the CPU
 * emulation (same blocking and float32 accumulation order, no GPU needed).
 * All tensors are contiguous (row-major): x (B, N, C), coeff (C, K), mask (B, N), cos and sin
 * (B or 1, N, C/2), y (B, 1, C) for mean/masked and (B, N, C) for causal, all of the same dtype
 * -- except that coeff, mask, cos and sin may be float32 whatever x is (sideInputsFloat32).
 * N counts the context tokens only (queries of cross-mixing stay outside the op).
 */
#ifndef POM_POLY_AGGREGATE_H
#define POM_POLY_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define POM_API __declspec(dllexport)
#else
#define POM_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum
{
    POM_DTYPE_FLOAT32 = 0,
    POM_DTYPE_FLOAT16 = 1,
    POM_DTYPE_BFLOAT16 = 2
} PomDType;

typedef enum
{
    POM_VARIANT_V1 = 1,
    POM_VARIANT_V2 = 2
} PomVariant;

typedef enum
{
    POM_MODE_MEAN = 0,
    POM_MODE_CAUSAL = 1,
    POM_MODE_MASKED = 2
} PomMode;

/* Rotation of the features before aggregation (docs/poly_aggregate.md, "RoPE"). */
typedef enum
{
    POM_ROPE_NONE = 0,
    POM_ROPE_1D = 1, /* pairs (c, c + C/2), C % 2 == 0 */
    POM_ROPE_2D = 2  /* row half pairs (k, k + C/4), column half (C/2 + k, C/2 + C/4 + k), C % 4 == 0 */
} PomRope;

/* Argument errors are negative; positive return values are cudaError_t codes. */
typedef enum
{
    POM_SUCCESS = 0,
    POM_ERROR_BAD_SHAPE = -1,
    POM_ERROR_BAD_DEGREE = -2,
    POM_ERROR_BAD_VARIANT = -3,
    POM_ERROR_BAD_MODE = -4,
    POM_ERROR_BAD_DTYPE = -5,
    POM_ERROR_MISSING_INPUT = -6,
    POM_ERROR_WORKSPACE_TOO_SMALL = -7,
    POM_ERROR_CHANNELS_NOT_DIVISIBLE = -8,
    POM_ERROR_BAD_ROPE = -9,
    POM_ERROR_ROPE_CHANNELS = -10,
    POM_ERROR_ROPE_UNSUPPORTED = -11,
    POM_ERROR_BAD_FRAME_TOKENS = -12,
    POM_ERROR_TOKENS_NOT_FRAME_MULTIPLE = -13,
    POM_ERROR_OUT_OF_MEMORY = -14,  /* CPU kernel: its scratch memory could not be allocated */
    POM_ERROR_PARALLEL_FOR = -15,   /* CPU kernel: the caller's parallel loop reported a failure */
    POM_ERROR_BAD_SIDE_DTYPE = -16  /* sideInputsFloat32 is neither 0 nor 1 */
} PomStatus;

/* Largest supported degree K (PoM uses 2..5; the upstream Triton kernels allow <= 16). */
#define POM_MAX_DEGREE 16
/* Largest degree with RoPE: a thread holds the coefficients of both channels of a pair. */
#define POM_MAX_ROPE_DEGREE 8

typedef struct
{
    int64_t batch;    /* B >= 0 */
    int64_t tokens;   /* N >= 0 */
    int64_t channels; /* C >= 0; v1 needs C % degree == 0 */
    int32_t degree;   /* K in [1, POM_MAX_DEGREE] */
    int32_t variant;  /* PomVariant */
    int32_t mode;     /* PomMode */
    int32_t dtype;    /* PomDType of x, coeff, mask, cos, sin and y */
    /* Added after the first release; zero keeps the original behaviour, so descriptions that
       leave them out ({B, N, C, K, variant, mode, dtype}) still mean what they meant. */
    int64_t frameTokens;  /* F: 0 off; > 0 block-causal over frames of F tokens (mode causal, N % F == 0) */
    int32_t rope;         /* PomRope; not none needs v2, degree <= POM_MAX_ROPE_DEGREE, cos and sin */
    int32_t ropePerBatch; /* 0: cos/sin are (1, N, C/2), shared by the batch; 1: (B, N, C/2) */
    /* 0: coeff, mask, cos and sin in dtype (the original behaviour); 1: float32 whatever dtype is,
       so that a 16-bit x keeps exact coefficients, mask weights and rotation angles. */
    int32_t sideInputsFloat32;
} PomPolyAggregateDesc;

/* POM_SUCCESS or the PomStatus saying what is wrong with the description. */
POM_API int pomPolyAggregateValidate(PomPolyAggregateDesc const* desc);

/* Bytes of scratch memory the GPU launch needs (an upper bound over pointer alignments). */
POM_API size_t pomPolyAggregateWorkspaceSize(PomPolyAggregateDesc const* desc);

/* Human-readable text for a PomStatus or a cudaError_t value. */
POM_API char const* pomPolyAggregateStatusString(int status);

/*
 * Enqueue the op on `stream` (a cudaStream_t). Device pointers; coeff only for v2, mask only
 * for masked, cos and sin only with RoPE (pass NULL otherwise). Deterministic: the same inputs
 * give bit-identical outputs on every run and every GPU.
 */
POM_API int pomPolyAggregateLaunchEx(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void const* cos, void const* sin, void* y, void* workspace, size_t workspaceBytes, void* stream);

/* pomPolyAggregateLaunchEx without cos and sin (any description without RoPE). */
POM_API int pomPolyAggregateLaunch(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void* y, void* workspace, size_t workspaceBytes, void* stream);

/*
 * Test-only CPU emulation of pomPolyAggregateLaunchEx (plugins/tests/polyAggregateCpuEmulation.cpp):
 * same blocking, same float32 accumulation order. Host pointers; fp16/bf16 tensors are raw 16-bit
 * words. Built into the test library only; the shipped CPU kernel is pomPolyAggregateCpuKernel.
 */
POM_API int pomPolyAggregateCpuEmulationEx(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void const* cos, void const* sin, void* y);

/* pomPolyAggregateCpuEmulationEx without cos and sin. */
POM_API int pomPolyAggregateCpuEmulation(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void* y);

/*
 * A parallel loop given by the caller of the CPU kernel: run task(data, i) once for every i in
 * [0, count), in any order, on any threads, and return 0 when all ran (non-zero otherwise).
 * onnxruntime's custom op passes its intra-op thread pool this way.
 */
typedef void (*PomTask)(void* data, size_t index);
typedef int (*PomParallelFor)(void* pool, PomTask task, void* data, size_t count);

/*
 * The CPU kernel (polyAggregateCpuKernel.cpp), what onnxruntime's custom op runs: host pointers,
 * one read of x for mean and masked, float32 sums. The work is cut by shapes only, so results
 * are bit-identical for any thread count. parallelFor NULL: the calling thread does all the work.
 */
POM_API int pomPolyAggregateCpuKernel(PomPolyAggregateDesc const* desc, void const* x, void const* coeff,
    void const* mask, void const* cos, void const* sin, void* y, PomParallelFor parallelFor, void* pool);

#ifdef __cplusplus
}
#endif

#endif /* POM_POLY_AGGREGATE_H */
