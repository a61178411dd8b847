// topk_encode CUDA kernels (compiled only when nvcc is available).
#include <cuda_runtime.h>

#include "topk_encode/topk_encode.h"
