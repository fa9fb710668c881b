// Host emulation (plugins/tests/cuda_host): stands in for CUDA's <cuda_fp16.h>.
#include "cudaHost.h"
