/*
 * Host emulation of the small part of CUDA that the PolyAggregate kernels use, so that
 * polyAggregateKernel.cu compiles with g++ and its kernels run on CPU threads in CI, where
 * there is no GPU. The same source that nvcc compiles for the GPU is executed: indexing,
 * blocking, vector loads and stores, the causal scan and carry chain, the split reduction.
 *
 * How it runs: a launch executes the grid's blocks one after another. Each block's threads are
 * fibers (ucontext) on one host thread that run in turn from one __syncthreads() to the next,
 * in a fixed order (reversed with POM_CUDA_HOST_THREAD_ORDER=reverse); __shared__ variables are
 * function statics (one block runs at a time, so one copy serves them all). Device memory is
 * host memory. Build with -fsanitize=address to catch out-of-bounds global and shared accesses.
 *
 * Concurrent blocks: with POM_CUDA_HOST_PROCESSES=K (K > 1) in the environment, a launch forks
 * K processes that take blocks from a shared counter, as a GPU's block scheduler does, and run
 * them at the same time, each process with its own copy of the __shared__ statics. Blocks that
 * wait for one another then really wait. The memory the kernels write (outputs, workspace) must
 * be shared between processes: cudaMalloc here maps it MAP_SHARED, and callers that pass their
 * own buffers must do the same. A spin-wait's __nanosleep() really sleeps, so waiting processes
 * hold no core. POM_CUDA_HOST_VERBOSE=1 prints, per launch, the number of
 * spin-wait sleeps, so a test can tell that blocks did wait.
 *
 * Faults a GPU would raise are reported by the launch as an error, with a message that
 * cudaGetErrorString() returns: a vector load or store that is not aligned to its size
 * (cudaErrorMisalignedAddress). A spin-wait that never ends (a deadlock on the GPU) aborts the
 * process with a message.
 *
 * Not emulated: the GPU memory model (the host's is stronger), warps, the device math library's
 * last bits (erfcf here is glibc's), and anything about speed.
 */
#ifndef POM_CUDA_HOST_H
#define POM_CUDA_HOST_H

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <mutex>
#include <new>
#include <utility>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

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

inline thread_local uint3 threadIdx{}; // the running fiber's (set at each switch)
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
    cudaErrorLaunchFailure = 719,
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
    std::mutex faultMutex;
    cudaError_t fault = cudaSuccess;
    std::string faultText;
    std::atomic<long> sleeps{0};
    bool slowBlocks = false; // this process's blocks pause at each barrier (concurrent launches)
};

//! Memory shared by the processes of a launch with concurrent blocks.
struct SharedLaunch
{
    std::atomic<int> started{0};              // processes ready to take blocks
    std::atomic<int> forked{1 << 30};         // how many were forked (set once all are)
    std::atomic<unsigned long long> nextBlock{0};
    std::atomic<long> sleeps{0};
    std::atomic<int> fault{cudaSuccess};
    char faultText[256] = {};
};

//! Anonymous memory that forked processes share (nullptr if none); freed with munmap.
inline void* mapShared(size_t bytes)
{
    void* memory = mmap(nullptr, bytes == 0 ? 1 : bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return memory == MAP_FAILED ? nullptr : memory;
}

//! cudaMalloc's shared mappings, with their sizes, for cudaFree.
inline std::vector<std::pair<void*, size_t>>& sharedAllocations()
{
    static std::vector<std::pair<void*, size_t>> allocations;
    return allocations;
}

inline std::mutex& sharedAllocationsMutex()
{
    static std::mutex mutex;
    return mutex;
}

inline int processCount()
{
    char const* text = std::getenv("POM_CUDA_HOST_PROCESSES");
    int const count = text != nullptr ? std::atoi(text) : 1;
    return count > 1 ? count : 1;
}

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

//! The threads of one block as fibers (ucontext) on the calling OS thread: each runs until it
//! reaches __syncthreads() or returns, then the next one runs. One OS thread per block keeps
//! the machine's run queue short (256 runnable threads per block would flood a small CI
//! machine), and the order in which the threads run between two barriers is fixed: forward,
//! or reversed with POM_CUDA_HOST_THREAD_ORDER=reverse. A kernel that reads another thread's
//! shared-memory write without a barrier in between gets the old value in one of the two
//! orders, so running both finds a missing __syncthreads deterministically.
class BlockFibers
{
public:
    static constexpr size_t kStackBytes = 256 * 1024;

    explicit BlockFibers(unsigned long long threads)
        : mFibers(threads)
        , mPageBytes(static_cast<size_t>(sysconf(_SC_PAGESIZE)))
    {
        size_t const bytes = threads * kStackBytes;
        void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        mStacks = memory == MAP_FAILED ? nullptr : static_cast<char*>(memory);
        for (unsigned long long t = 0; mStacks != nullptr && t < threads; ++t)
        {
            mprotect(stackOf(t), mPageBytes, PROT_NONE); // a guard page: a stack overflow faults
        }
        char const* order = std::getenv("POM_CUDA_HOST_THREAD_ORDER");
        mReverse = order != nullptr && std::strcmp(order, "reverse") == 0;
    }

    ~BlockFibers()
    {
        if (mStacks != nullptr)
        {
            munmap(mStacks, mFibers.size() * kStackBytes);
        }
    }

    BlockFibers(BlockFibers const&) = delete;
    BlockFibers& operator=(BlockFibers const&) = delete;

    bool ready() const
    {
        return mStacks != nullptr;
    }

    //! Runs `body` for every thread of the current block until all have returned.
    template <typename Body>
    void run(dim3 blockShape, Body const& body)
    {
        sCurrent = this;
        mBody = [&body] { body(); };
        unsigned long long const threads = mFibers.size();
        for (unsigned long long t = 0; t < threads; ++t)
        {
            Fiber& fiber = mFibers[t];
            fiber.index = uint3{static_cast<unsigned>(t % blockShape.x), static_cast<unsigned>(t / blockShape.x % blockShape.y),
                static_cast<unsigned>(t / (1ULL * blockShape.x * blockShape.y))};
            fiber.finished = false;
            getcontext(&fiber.context);
            fiber.context.uc_stack.ss_sp = stackOf(t);
            fiber.context.uc_stack.ss_size = kStackBytes;
            fiber.context.uc_link = nullptr;
            makecontext(&fiber.context, &BlockFibers::entry, 0);
        }
        unsigned long long finished = 0;
        while (finished < threads)
        {
            // One phase: every unfinished thread runs up to its next barrier, or to its end.
            for (unsigned long long i = 0; i < threads; ++i)
            {
                Fiber& fiber = mFibers[mReverse ? threads - 1 - i : i];
                if (!fiber.finished)
                {
                    switchTo(fiber);
                }
            }
            if (state().slowBlocks)
            {
                struct timespec const pause{0, 200'000}; // 0.2 ms a phase
                nanosleep(&pause, nullptr);
            }
            unsigned long long const done = countFinished();
            if (done != threads && done != finished)
            {
                fault(cudaErrorLaunchFailure, "__syncthreads() reached by some threads of a block while others returned");
            }
            finished = done;
        }
        sCurrent = nullptr;
    }

    //! __syncthreads(): back to the scheduler, which resumes this thread in the next phase.
    static void barrier()
    {
        BlockFibers& self = *sCurrent;
        self.switchToScheduler(self.mFibers[self.mRunning], false);
    }

private:
    struct Fiber
    {
        ucontext_t context{};
        uint3 index{};
        bool finished = false;
    };

    char* stackOf(unsigned long long t) const
    {
        return mStacks + t * kStackBytes;
    }

    unsigned long long countFinished() const
    {
        unsigned long long count = 0;
        for (Fiber const& fiber : mFibers)
        {
            count += fiber.finished ? 1 : 0;
        }
        return count;
    }

    void switchTo(Fiber& fiber)
    {
        mRunning = static_cast<unsigned long long>(&fiber - mFibers.data());
        threadIdx = fiber.index;
#if defined(__SANITIZE_ADDRESS__)
        void* fakeStack = nullptr;
        __sanitizer_start_switch_fiber(&fakeStack, stackOf(mRunning), kStackBytes);
        swapcontext(&mScheduler, &fiber.context);
        __sanitizer_finish_switch_fiber(fakeStack, nullptr, nullptr);
#else
        swapcontext(&mScheduler, &fiber.context);
#endif
    }

    void switchToScheduler(Fiber& fiber, bool finished)
    {
        fiber.finished = finished;
#if defined(__SANITIZE_ADDRESS__)
        void* fakeStack = nullptr;
        __sanitizer_start_switch_fiber(finished ? nullptr : &fakeStack, mSchedulerStackBottom, mSchedulerStackBytes);
        swapcontext(&fiber.context, &mScheduler);
        __sanitizer_finish_switch_fiber(fakeStack, &mSchedulerStackBottom, &mSchedulerStackBytes);
#else
        swapcontext(&fiber.context, &mScheduler);
#endif
    }

    static void entry()
    {
        BlockFibers& self = *sCurrent;
#if defined(__SANITIZE_ADDRESS__)
        __sanitizer_finish_switch_fiber(nullptr, &self.mSchedulerStackBottom, &self.mSchedulerStackBytes);
#endif
        self.mBody();
        self.switchToScheduler(self.mFibers[self.mRunning], true); // never resumed
    }

    std::vector<Fiber> mFibers;
    size_t mPageBytes;
    char* mStacks = nullptr;
    bool mReverse = false;
    ucontext_t mScheduler{};
    unsigned long long mRunning = 0;
    std::function<void()> mBody;
    void const* mSchedulerStackBottom = nullptr;
    size_t mSchedulerStackBytes = 0;
    static inline thread_local BlockFibers* sCurrent = nullptr;
};

//! Runs the blocks handed out by `nextBlock`, one at a time on this OS thread, each block's
//! threads as fibers, until it hands out an index past the grid.
template <typename Body, typename NextBlock>
void runBlocks(dim3 grid, dim3 block, Body const& body, NextBlock const& nextBlock)
{
    unsigned long long const threads = 1ULL * block.x * block.y * block.z;
    unsigned long long const blocks = 1ULL * grid.x * grid.y * grid.z;
    BlockFibers fibers(threads);
    if (!fibers.ready())
    {
        fault(cudaErrorLaunchFailure, "could not map the stacks of a block's threads");
        return;
    }
    blockDim = block;
    gridDim = grid;
    for (unsigned long long b = nextBlock(); b < blocks; b = nextBlock())
    {
        blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
            static_cast<unsigned>(b / (1ULL * grid.x * grid.y))};
        fibers.run(block, body); // the block's shared statics are reused by the next block
    }
}

//! Runs `body` once per thread of every block of the grid: blocks in order, or with
//! POM_CUDA_HOST_PROCESSES > 1 concurrently in that many forked processes.
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
    s.fault = cudaSuccess;
    s.faultText.clear();
    s.sleeps = 0;
    int const processes = processCount();
    if (processes == 1)
    {
        unsigned long long next = 0;
        runBlocks(grid, block, body, [&] { return next++; });
    }
    else
    {
        void* memory = mapShared(sizeof(SharedLaunch));
        if (memory == nullptr)
        {
            return cudaErrorLaunchFailure;
        }
        auto* shared = new (memory) SharedLaunch{};
        std::fflush(nullptr); // a child's exit must not repeat buffered output
        std::vector<pid_t> children;
        bool crashed = false;
        for (int i = 0; i < processes; ++i)
        {
            pid_t const pid = fork();
            if (pid < 0)
            {
                crashed = true; // the processes already started still run every block
                break;
            }
            if (pid == 0)
            {
                // Start together: otherwise the first process forked can run a small grid alone
                // before the others exist, and no block ever waits for another.
                // The first process's blocks run slowly: a chunk that follows one of them in
                // another process must wait for it, whatever the timing of the machine.
                s.slowBlocks = i == 0;
                shared->started.fetch_add(1);
                struct timespec const pause{0, 20'000};
                while (shared->started.load() < shared->forked.load())
                {
                    nanosleep(&pause, nullptr);
                }
                runBlocks(grid, block, body, [&] { return shared->nextBlock.fetch_add(1); });
                shared->sleeps += s.sleeps;
                int expected = cudaSuccess;
                if (s.fault != cudaSuccess && shared->fault.compare_exchange_strong(expected, s.fault))
                {
                    std::snprintf(shared->faultText, sizeof(shared->faultText), "%s", s.faultText.c_str());
                }
                _exit(0);
            }
            children.push_back(pid);
        }
        shared->forked.store(static_cast<int>(children.size()));
        for (pid_t child : children)
        {
            int status = 0;
            crashed |= waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        }
        s.sleeps = shared->sleeps.load();
        if (crashed)
        {
            fault(cudaErrorLaunchFailure, "a process running blocks failed to start or ended abnormally");
        }
        else if (shared->fault != cudaSuccess)
        {
            fault(static_cast<cudaError_t>(shared->fault.load()), shared->faultText);
        }
        munmap(shared, sizeof(SharedLaunch));
    }
    if (char const* verbose = std::getenv("POM_CUDA_HOST_VERBOSE"); verbose != nullptr && *verbose == '1')
    {
        std::fprintf(stderr, "cuda_host: %llu blocks of %llu threads in %d process(es), %ld spin-wait sleeps\n",
            blocks, threads, processes, s.sleeps.load());
    }
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

//! Device memory is host memory: malloc'd (so AddressSanitizer guards its ends), or, when
//! launches run blocks in several processes, mapped shared so that all of them write to it.
inline cudaError_t cudaMalloc(void** devPtr, size_t size)
{
    if (cuda_host::processCount() == 1)
    {
        *devPtr = std::malloc(size == 0 ? 1 : size);
    }
    else
    {
        *devPtr = cuda_host::mapShared(size);
        std::lock_guard<std::mutex> lock(cuda_host::sharedAllocationsMutex());
        cuda_host::sharedAllocations().emplace_back(*devPtr, size);
    }
    return *devPtr != nullptr ? cudaSuccess : cudaErrorInvalidValue;
}

inline cudaError_t cudaFree(void* devPtr)
{
    std::lock_guard<std::mutex> lock(cuda_host::sharedAllocationsMutex());
    auto& mapped = cuda_host::sharedAllocations();
    for (auto it = mapped.begin(); it != mapped.end(); ++it)
    {
        if (it->first == devPtr)
        {
            munmap(it->first, it->second == 0 ? 1 : it->second);
            mapped.erase(it);
            return cudaSuccess;
        }
    }
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
    case cudaErrorMisalignedAddress:
    case cudaErrorLaunchFailure: return cuda_host::lastErrorText().c_str();
    }
    return "unrecognized error code";
}

// ---------------------------------------------------------------- device functions

inline void __syncthreads()
{
    cuda_host::BlockFibers::barrier();
}

inline void __threadfence()
{
    std::atomic_thread_fence(std::memory_order_seq_cst);
}

//! Called in spin-wait loops, which here wait for a block in another process: a real sleep,
//! so that a waiting process does not hold a core. On the GPU a wait that never ends is a
//! deadlock; here, after about a minute of sleeping, it aborts.
inline void __nanosleep(unsigned)
{
    constexpr long kMaxWaits = 1'000'000;
    thread_local long waits = 0;
    ++cuda_host::state().sleeps;
    if (++waits > kMaxWaits)
    {
        std::fprintf(stderr, "cuda_host: a spin-wait has not ended after %ld sleeps (block %u): deadlock\n",
            kMaxWaits, blockIdx.x);
        std::abort();
    }
    struct timespec const pause{0, 20'000}; // 20 us
    nanosleep(&pause, nullptr);
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
