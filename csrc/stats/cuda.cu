// stats CUDA kernels (compiled only when nvcc is available).
#include <cuda_runtime.h>

#include "stats/stats.h"
