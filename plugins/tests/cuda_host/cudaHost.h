/*
 * Host emulation of the small part of CUDA that the PolyAggregate kernels use, so that
 * polyAggregateKernel.cu compiles with g++ and its kernels run on CPU threads in CI, where
 * there is no GPU. The same source that nvcc compiles for the GPU is executed: indexing,
 * blocking, vector loads and stores, the causal scan and carry chain, the split reduction.
 *
 * How it runs: a launch executes the grid's blocks one after another. Each block's threads are
 * real host threads that meet at __syncthreads() on a std::barrier; __shared__ variables are
 * function statics (one block runs at a time, so one copy serves them all). Device memory is
 * host memory. Build with -fsanitize=address to catch out-of-bounds global and shared accesses.
 *
 * Faults a GPU would raise are reported by the launch as an error, with a message that
 * cudaGetErrorString() returns: a vector load or store that is not aligned to its size
 * (cudaErrorMisalignedAddress). A spin-wait that never ends (a deadlock on the GPU) aborts the
 * process with a message.
 *
 * Not emulated: blocks running concurrently, the GPU memory model, warps, the device math
 * library's last bits (erfcf here is glibc's), and anything about speed.
 */
#ifndef POM_CUDA_HOST_H
#define POM_CUDA_HOST_H

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

//! Lets tests tell the emulation from a real CUDA build.
#define POM_CUDA_HOST_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// ---------------------------------------------------------------- vector and index types

struct uint3
{
    unsigned x, y, z;
};

struct dim3
{
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1)
        : x(vx)
        , y(vy)
        , z(vz)
    {
    }
};

struct alignas(8) uint2
{
    unsigned x, y;
};

struct alignas(16) uint4
{
    unsigned x, y, z, w;
};

inline uint2 make_uint2(unsigned x, unsigned y)
{
    return uint2{x, y};
}

inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w)
{
    return uint4{x, y, z, w};
}

inline thread_local uint3 threadIdx{};
inline thread_local uint3 blockIdx{};
inline thread_local dim3 blockDim{};
inline thread_local dim3 gridDim{};

// ---------------------------------------------------------------- runtime types

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

// Values as in CUDA's driver_types.h.
enum cudaError
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorMisalignedAddress = 716,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind
{
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

struct cudaLaunchConfig_t
{
    dim3 gridDim;
    dim3 blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    void* attrs;
    unsigned numAttrs;
};

namespace cuda_host
{

//! State of the launch in progress (one at a time: launches are synchronous here).
struct LaunchState
{
    std::barrier<>* blockBarrier = nullptr;
    std::mutex faultMutex;
    cudaError_t fault = cudaSuccess;
    std::string faultText;
};

inline LaunchState& state()
{
    static LaunchState s;
    return s;
}

inline std::string& lastErrorText()
{
    static std::string text;
    return text;
}

inline void fault(cudaError_t error, std::string const& text)
{
    LaunchState& s = state();
    std::lock_guard<std::mutex> lock(s.faultMutex);
    if (s.fault == cudaSuccess)
    {
        s.fault = error;
        s.faultText = text;
    }
}

template <typename T>
inline void checkAligned(T const* address, char const* what)
{
    if (reinterpret_cast<uintptr_t>(address) % alignof(T) != 0)
    {
        char text[160];
        std::snprintf(text, sizeof(text), "misaligned address: %s of %zu bytes at %p (block %u, thread %u,%u)", what,
            sizeof(T), static_cast<void const*>(address), blockIdx.x, threadIdx.x, threadIdx.y);
        fault(cudaErrorMisalignedAddress, text);
    }
}

//! Runs `body` once per thread of every block of the grid, blocks in order.
template <typename Body>
cudaError_t launch(cudaLaunchConfig_t const& config, Body const& body)
{
    dim3 const grid = config.gridDim;
    dim3 const block = config.blockDim;
    unsigned long long const threads = 1ULL * block.x * block.y * block.z;
    unsigned long long const blocks = 1ULL * grid.x * grid.y * grid.z;
    if (threads == 0 || threads > 1024 || blocks == 0 || config.dynamicSmemBytes != 0)
    {
        return cudaErrorInvalidConfiguration;
    }
    LaunchState& s = state();
    std::barrier<> blockBarrier(static_cast<std::ptrdiff_t>(threads));
    s.blockBarrier = &blockBarrier;
    s.fault = cudaSuccess;
    s.faultText.clear();
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned long long t = 0; t < threads; ++t)
    {
        pool.emplace_back([&, t] {
            threadIdx = uint3{static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                static_cast<unsigned>(t / (1ULL * block.x * block.y))};
            blockDim = block;
            gridDim = grid;
            for (unsigned long long b = 0; b < blocks; ++b)
            {
                blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                    static_cast<unsigned>(b / (1ULL * grid.x * grid.y))};
                body();
                blockBarrier.arrive_and_wait(); // the block's shared statics are reused by the next
            }
        });
    }
    for (std::thread& thread : pool)
    {
        thread.join();
    }
    s.blockBarrier = nullptr;
    lastErrorText() = s.faultText;
    return s.fault;
}

} // namespace cuda_host

// ---------------------------------------------------------------- runtime API

template <typename... ExpTypes, typename... ActTypes>
cudaError_t cudaLaunchKernelEx(cudaLaunchConfig_t const* config, void (*kernel)(ExpTypes...), ActTypes&&... args)
{
    // Each thread gets its own copy of the parameters, as kernel parameters are per launch.
    return cuda_host::launch(*config, [&] { kernel(static_cast<ExpTypes>(args)...); });
}

//! One emulated device, whose memory is host memory. Launches complete before they return.
inline cudaError_t cudaGetDeviceCount(int* count)
{
    *count = 1;
    return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** devPtr, size_t size)
{
    *devPtr = std::malloc(size);
    return *devPtr != nullptr ? cudaSuccess : cudaErrorInvalidValue;
}

inline cudaError_t cudaFree(void* devPtr)
{
    std::free(devPtr);
    return cudaSuccess;
}

inline cudaError_t cudaMemcpy(void* dst, void const* src, size_t count, cudaMemcpyKind)
{
    if (count != 0)
    {
        std::memcpy(dst, src, count);
    }
    return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize()
{
    return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t = nullptr)
{
    if (count != 0)
    {
        std::memset(devPtr, value, count);
    }
    return cudaSuccess;
}

inline char const* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorMisalignedAddress: return cuda_host::lastErrorText().c_str();
    }
    return "unrecognized error code";
}

// ---------------------------------------------------------------- device functions

inline void __syncthreads()
{
    cuda_host::state().blockBarrier->arrive_and_wait();
}

inline void __threadfence()
{
    std::atomic_thread_fence(std::memory_order_seq_cst);
}

//! Called in spin-wait loops: on the GPU a wait that never ends is a deadlock; here, too.
inline void __nanosleep(unsigned)
{
    constexpr long kMaxWaits = 20'000'000;
    thread_local long waits = 0;
    if (++waits > kMaxWaits)
    {
        std::fprintf(stderr, "cuda_host: a spin-wait has not ended after %ld sleeps (block %u): deadlock\n",
            kMaxWaits, blockIdx.x);
        std::abort();
    }
    std::this_thread::yield();
}

inline unsigned atomicAdd(unsigned* address, unsigned value)
{
    return std::atomic_ref<unsigned>(*address).fetch_add(value);
}

inline int atomicExch(int* address, int value)
{
    return std::atomic_ref<int>(*address).exchange(value);
}

// Cache-hinted loads and stores: plain accesses that fault like the GPU when misaligned.
template <typename T>
T __ldcs(T const* address)
{
    cuda_host::checkAligned(address, "load");
    return *address;
}

template <typename T>
T __ldcg(T const* address)
{
    cuda_host::checkAligned(address, "load");
    return *address;
}

template <typename T>
void __stcs(T* address, T value)
{
    cuda_host::checkAligned(address, "store");
    *address = value;
}

template <typename T>
void __stcg(T* address, T value)
{
    cuda_host::checkAligned(address, "store");
    *address = value;
}

template <typename T>
T min(T a, T b)
{
    return b < a ? b : a;
}

inline unsigned __float_as_uint(float value)
{
    unsigned bits;
    std::memcpy(&bits, &value, sizeof(bits));
    return bits;
}

// ---------------------------------------------------------------- 16-bit floats

struct __half
{
    unsigned short bits;
};

struct __nv_bfloat16
{
    unsigned short bits;
};

inline float __half2float(__half value)
{
    _Float16 h;
    std::memcpy(&h, &value.bits, sizeof(h));
    return static_cast<float>(h);
}

inline __half __float2half_rn(float value)
{
    _Float16 const h = static_cast<_Float16>(value); // IEEE round to nearest even
    __half out;
    std::memcpy(&out.bits, &h, sizeof(h));
    return out;
}

inline unsigned short __half_as_ushort(__half value)
{
    return value.bits;
}

inline float __bfloat162float(__nv_bfloat16 value)
{
    uint32_t const bits = uint32_t{value.bits} << 16;
    float out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
}

inline __nv_bfloat16 __float2bfloat16_rn(float value)
{
    uint32_t bits = __float_as_uint(value);
    if (std::isnan(value))
    {
        return __nv_bfloat16{static_cast<unsigned short>((bits >> 16) | 0x0040U)}; // quiet NaN
    }
    bits += 0x7FFFU + ((bits >> 16) & 1U); // round to nearest even
    return __nv_bfloat16{static_cast<unsigned short>(bits >> 16)};
}

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 value)
{
    return value.bits;
}

#endif // POM_CUDA_HOST_H
