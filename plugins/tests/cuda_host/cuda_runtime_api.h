// Host emulation (plugins/tests/cuda_host): stands in for CUDA's <cuda_runtime_api.h>.
#include "cudaHost.h"
