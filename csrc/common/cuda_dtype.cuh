// Device-side storage traits shared by the CUDA kernels: for each host storage type of
// common/dtype.h (float, double, bf16_t, f16_t) the CUDA element type (raw), the
// accumulation type (acc) and the widening / narrowing conversions. Host code dispatches
// on dtype codes with dispatch_float (dtype.h) and the kernels use CT<T>.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common/dtype.h"

namespace actspace {
namespace cuda {

template <typename T> struct CT;
template <> struct CT<float> {
  using raw = float; using acc = float;
  __device__ static float ld(float x) { return x; }
  __device__ static float st(float x) { return x; }
};
template <> struct CT<double> {
  using raw = double; using acc = double;
  __device__ static double ld(double x) { return x; }
  __device__ static double st(double x) { return x; }
};
template <> struct CT<bf16_t> {
  using raw = __nv_bfloat16; using acc = float;
  __device__ static float ld(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 st(float x) { return __float2bfloat16_rn(x); }
};
template <> struct CT<f16_t> {
  using raw = __half; using acc = float;
  __device__ static float ld(__half x) { return __half2float(x); }
  __device__ static __half st(float x) { return __float2half_rn(x); }
};

// Throws with the CUDA error of the last launch (launch errors only: never synchronises).
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace actspace
