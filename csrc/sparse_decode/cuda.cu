// sparse_decode CUDA kernels (compiled only when nvcc is available).
#include <cuda_runtime.h>

#include "sparse_decode/sparse_decode.h"
