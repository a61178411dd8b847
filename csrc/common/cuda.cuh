// What every CUDA kernel source includes: the CUDA runtime (or, in the emulated core, the host
// shim of common/cuda_emulate.h), the launch and dynamic-shared-memory macros that let one
// source build for both, the device storage traits CT<T> and the launch check.
//
// Conventions of the CUDA entry points (one for every family):
//   - data pointers are `const void*` / `void*` (typed when the type is fixed, e.g. int32_t*),
//     dtype codes say what they point at (common/dtype.h: dispatch_float/acc/index);
//   - the stream is a `Stream` (void*, a cudaStream_t; 0 = the legacy default stream);
//   - nothing allocates, nothing synchronises; launch errors throw at once.
#pragma once

#if defined(ACTSPACE_CUDA_EMULATE)
#include "common/cuda_emulate.h"
// kernel<<<grid, block, smem, stream>>>(args...) for the emulator
#define ACTSPACE_LAUNCH(grid, block, smem, stream, ...) \
  ::actspace::emu::launcher(grid, block, smem, stream, __VA_ARGS__)
#define ACTSPACE_DYNAMIC_SMEM(type, name) \
  type* name = reinterpret_cast<type*>(::actspace::emu::dynamic_smem())
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define ACTSPACE_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define ACTSPACE_DYNAMIC_SMEM(type, name)                  \
  extern __shared__ __align__(16) unsigned char name##_[]; \
  type* name = reinterpret_cast<type*>(name##_)
#endif

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "common/dtype.h"

namespace actspace {
namespace cuda {

using Stream = void*;
inline cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }

// Device storage traits: for each host storage type of common/dtype.h (float, double, bf16_t,
// f16_t) the CUDA element type (raw), the accumulation type (acc), the widening load
// (ld: raw -> acc, ldp: through the read-only cache) and the narrowing store (st).
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
template <typename T>
__device__ __forceinline__ typename CT<T>::acc ldg(const typename CT<T>::raw* p) {
  return CT<T>::ld(__ldg(p));
}

// V elements moved as one aligned access (16 bytes or less); the caller checks alignment.
template <typename R, int V> struct alignas(sizeof(R) * V) Vec { R v[V]; };
template <typename R, int V>
__device__ __forceinline__ Vec<R, V> vload(const R* p) {
  return *reinterpret_cast<const Vec<R, V>*>(p);
}
template <typename R, int V>
__device__ __forceinline__ void vstore(R* p, const Vec<R, V>& v) {
  *reinterpret_cast<Vec<R, V>*>(p) = v;
}
// Whether every pointer is `bytes`-aligned (null counts as aligned).
inline bool aligned_to(int64_t bytes, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
  return true;
}

// Throws with the CUDA error of the last launch (launch errors only: never synchronises).
// The emulator throws from the launch itself.
inline void check_launch(const char* what) {
#if !defined(ACTSPACE_CUDA_EMULATE)
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
#else
  (void)what;
#endif
}

}  // namespace cuda
}  // namespace actspace
