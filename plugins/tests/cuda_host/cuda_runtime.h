// Host emulation (plugins/tests/cuda_host): stands in for CUDA's <cuda_runtime.h>.
#include "cudaHost.h"
