// Host emulation (plugins/tests/cuda_host): stands in for CUDA's <cuda_bf16.h>.
#include "cudaHost.h"
