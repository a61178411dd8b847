// A host emulation of the small part of CUDA our kernels use, so that the same kernel
// sources run on the CPU (build option ACTSPACE_CUDA_EMULATE=ON, csrc/common/cuda.cuh picks
// this header instead of cuda_runtime.h) under AddressSanitizer, UBSan and ThreadSanitizer.
//
// Why real threads: a data race between the threads of a block (a missing __syncthreads or
// __syncwarp) is only visible to ThreadSanitizer when the threads are real OS threads that
// synchronise solely through the emulated barriers. So each block's threads run on a pool of
// OS threads, one block at a time:
//   - __syncthreads: a barrier of the block's live threads (an exited thread drops out);
//   - __syncwarp / __shfl*_sync / __ballot_sync: a barrier of the warp's 32 lanes plus an
//     exchange through per-warp slots; a mask naming a lane that has exited is reported;
//     only full masks (every lane of the warp) are supported, which is all we use;
//   - atomicAdd: std::atomic_ref;
//   - launch limits of a real GPU are checked (block <= 1024 threads, grid.y/z <= 65535,
//     <= 48 KiB dynamic shared memory without opt-in), and dynamic shared memory is a fresh
//     heap buffer of exactly the requested size (so ASan sees an overrun) filled with
//     different garbage for each block (so a kernel reading it before writing shows up).
// Static __shared__ arrays become function statics: shared by the block's threads, reused
// by the next block (blocks run one after another), which is what CUDA promises too.
// Launches are serialised by a process-wide lock; nothing here is meant to be fast.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <math.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// The CUDA headers define these as attributes that g++ ignores with a warning.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline __attribute__((always_inline))

namespace actspace {
namespace emu {

// Per-thread coordinates, set by the launcher before the kernel body runs.
struct ThreadCoords {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
extern thread_local ThreadCoords tl_coords;

unsigned char* dynamic_smem();  // this block's dynamic shared memory
void syncthreads();
void syncwarp(unsigned mask, const char* what);
// The value `v` of lane `src` of the calling warp (all lanes of `mask` take part).
uint64_t exchange(unsigned mask, uint64_t mine, int src, const char* what);
unsigned ballot(unsigned mask, bool pred, const char* what);
int lane_id();

// Runs body(tid) for tid in [0, threads) of every block of the grid, one block at a time;
// throws std::runtime_error for a launch a GPU would refuse or a misuse seen in a kernel.
void run_grid(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body);

template <typename... P>
struct Launcher {
  dim3 grid, block;
  size_t smem;
  void (*kernel)(P...);
  template <typename... A>
  void operator()(A&&... a) const {
    // parameters are copied once, as a launch copies them to the GPU
    const std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    auto* k = kernel;
    run_grid(grid, block, smem, [&args, k]() { std::apply(k, args); });
  }
};

template <typename... P>
Launcher<P...> launcher(dim3 grid, dim3 block, size_t smem, cudaStream_t, void (*kernel)(P...)) {
  return Launcher<P...>{grid, block, smem, kernel};
}

template <typename T>
T shfl_any(unsigned mask, T v, int src, const char* what) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a scalar");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = exchange(mask, bits, src, what);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu
}  // namespace actspace

// ------------------------------------------------------------------ the CUDA names kernels use
#define threadIdx (::actspace::emu::tl_coords.thread)
#define blockIdx (::actspace::emu::tl_coords.block)
#define blockDim (::actspace::emu::tl_coords.block_dim)
#define gridDim (::actspace::emu::tl_coords.grid_dim)

inline void __syncthreads() { ::actspace::emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::actspace::emu::syncwarp(mask, "__syncwarp"); }
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return ::actspace::emu::ballot(mask, pred != 0, "__ballot_sync");
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  (void)width;
  return ::actspace::emu::shfl_any(mask, v, src & 31, "__shfl_sync");
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  (void)width;
  return ::actspace::emu::shfl_any(mask, v, (::actspace::emu::lane_id() ^ lane_mask) & 31,
                                   "__shfl_xor_sync");
}
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }
