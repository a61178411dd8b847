// topk_encode CUDA kernels (compiled only when nvcc is available).
//
// merge: one warp per row. The row's running top-k (k <= 256) lives in shared memory as a
// list sorted best first (ties: lower index first). The warp scans the tile row 32 columns
// at a time; a ballot of "key > current k-th" selects the few columns worth inserting, and
// each is inserted by the whole warp (position = count of entries >= the key, since a
// newcomer has a higher index than everything already there; then a one-slot shift).
// Launched on the caller's stream; nothing synchronises.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/cuda_dtype.cuh"
#include "topk_encode/topk_encode.h"

namespace actspace {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxK = 256;
constexpr unsigned kFull = 0xffffffffu;

// T: host storage type of the tile (see CT in common/cuda_dtype.cuh)
template <typename T, typename A, bool RELU, bool SCALE, bool THR>
__global__ void merge_kernel(const typename CT<T>::raw* __restrict__ tile, int64_t rows, int64_t cols, int64_t ld,
                             int64_t row0, int64_t m0, const A* __restrict__ b_enc,
                             const A* __restrict__ scale, const A* __restrict__ thr, int k,
                             A* __restrict__ run_vals, int32_t* __restrict__ run_idx) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  A* sv = reinterpret_cast<A*>(smem) + warp * k;
  int32_t* si = reinterpret_cast<int32_t*>(reinterpret_cast<A*>(smem) + kWarpsPerBlock * k) +
                warp * k;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (r >= rows) return;  // whole warps leave together; only __syncwarp below
  A* gv = run_vals + (row0 + r) * k;
  int32_t* gi = run_idx + (row0 + r) * k;
  for (int p = lane; p < k; p += 32) { sv[p] = gv[p]; si[p] = gi[p]; }
  __syncwarp();
  A kth = sv[k - 1];
  const typename CT<T>::raw* t = tile + r * ld;
  const A neg_inf = -static_cast<A>(INFINITY);
  for (int64_t c0 = 0; c0 < cols; c0 += 32) {
    const int64_t j = c0 + lane;
    A v = neg_inf;
    if (j < cols) {
      v = static_cast<A>(CT<T>::ld(t[j])) + b_enc[j];
      if (SCALE) v *= scale[j];
      if (RELU) v = v < A(0) ? A(0) : v;  // keeps NaN
      if (THR) v = v > thr[j] ? v : neg_inf;
    }
    unsigned mask = __ballot_sync(kFull, v > kth);  // NaN compares false: never selected
    while (mask) {
      const int src = __ffs(mask) - 1;
      mask &= mask - 1;
      const A nv = __shfl_sync(kFull, v, src);
      if (!(nv > kth)) continue;  // kth is warp-uniform, so is this branch
      int cnt = 0;
      for (int p = lane; p < k; p += 32) cnt += sv[p] >= nv;
      for (int o = 16; o > 0; o >>= 1) cnt += __shfl_xor_sync(kFull, cnt, o);
      const int pos = cnt;  // < k because nv > sv[k-1]
      A tv[kMaxK / 32];
      int32_t ti[kMaxK / 32];
#pragma unroll
      for (int q = 0; q < kMaxK / 32; ++q) {
        const int p = lane + 32 * q;
        if (p >= pos && p < k - 1) { tv[q] = sv[p]; ti[q] = si[p]; }
      }
      __syncwarp();
#pragma unroll
      for (int q = 0; q < kMaxK / 32; ++q) {
        const int p = lane + 32 * q;
        if (p >= pos && p < k - 1) { sv[p + 1] = tv[q]; si[p + 1] = ti[q]; }
      }
      if (lane == 0) { sv[pos] = nv; si[pos] = static_cast<int32_t>(m0 + c0 + src); }
      __syncwarp();
      kth = sv[k - 1];
    }
  }
  for (int p = lane; p < k; p += 32) { gv[p] = sv[p]; gi[p] = si[p]; }
}

template <typename A, typename O>
__global__ void finish_kernel(const A* __restrict__ rv, const int32_t* __restrict__ ri,
                              int64_t total, typename CT<O>::raw* __restrict__ ov,
                              int32_t* __restrict__ oi) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int32_t i = ri[e];
  ov[e] = CT<O>::st(i >= 0 ? rv[e] : A(0));
  oi[e] = i >= 0 ? i : -1;
}

template <typename Fn>
void dispatch_acc(int code, Fn&& fn) {
  if (code == kF32) fn(float{});
  else if (code == kF64) fn(double{});
  else throw std::invalid_argument(std::string("topk_encode (CUDA): accumulation dtype must be "
                                               "float32 or float64, got ") + dtype_name(code));
}

template <typename T, typename A, bool R, bool S, bool H>
void launch_merge(const typename CT<T>::raw* tile, int64_t rows, int64_t cols, int64_t ld, int64_t row0, int64_t m0,
                  const A* b, const A* s, const A* th, int k, A* rv, int32_t* ri,
                  cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const size_t shmem = static_cast<size_t>(kWarpsPerBlock) * k * (sizeof(A) + sizeof(int32_t));
  merge_kernel<T, A, R, S, H><<<grid, kWarpsPerBlock * 32, shmem, stream>>>(
      tile, rows, cols, ld, row0, m0, b, s, th, k, rv, ri);
}

}  // namespace

void topk_encode_merge(uintptr_t tile, int tile_dtype, int64_t rows, int64_t cols, int64_t ld,
                       int64_t row0, int64_t m0, uintptr_t b_enc, uintptr_t scale,
                       uintptr_t threshold, int acc_dtype, bool relu, int64_t k,
                       uintptr_t run_vals, uintptr_t run_idx, uintptr_t stream) {
  if (rows < 0 || cols < 0 || ld < cols || k < 1 || k > kMaxK ||
      m0 + cols > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("topk_encode_merge (CUDA): bad sizes (k must be <= 256)");
  if (!b_enc) throw std::invalid_argument("topk_encode_merge (CUDA): b_enc is required");
  if (rows == 0 || cols == 0) return;
  auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_acc(acc_dtype, [&](auto acc_tag) {
    using A = decltype(acc_tag);
    dispatch_float(tile_dtype, "topk_encode_merge tile", [&](auto tile_tag) {
      using T = decltype(tile_tag);
      auto tp = reinterpret_cast<const typename CT<T>::raw*>(tile);
      auto b = reinterpret_cast<const A*>(b_enc);
      auto s = reinterpret_cast<const A*>(scale);
      auto th = reinterpret_cast<const A*>(threshold);
      auto rv = reinterpret_cast<A*>(run_vals);
      auto ri = reinterpret_cast<int32_t*>(run_idx);
      const int kk = static_cast<int>(k);
      const int code = (relu ? 4 : 0) | (s ? 2 : 0) | (th ? 1 : 0);
      switch (code) {
#define ACTSPACE_CASE(c, R, S, H) \
  case c:                                                                             \
    launch_merge<T, A, R, S, H>(tp, rows, cols, ld, row0, m0, b, s, th, kk, rv, ri, st); \
    break;
        ACTSPACE_CASE(0, false, false, false)
        ACTSPACE_CASE(1, false, false, true)
        ACTSPACE_CASE(2, false, true, false)
        ACTSPACE_CASE(3, false, true, true)
        ACTSPACE_CASE(4, true, false, false)
        ACTSPACE_CASE(5, true, false, true)
        ACTSPACE_CASE(6, true, true, false)
        ACTSPACE_CASE(7, true, true, true)
#undef ACTSPACE_CASE
      }
    });
  });
  check_launch("topk_encode_merge (CUDA)");
}

void topk_encode_finish(uintptr_t run_vals, uintptr_t run_idx, int acc_dtype, int64_t n,
                        int64_t k, uintptr_t out_vals, int out_dtype, uintptr_t out_idx,
                        uintptr_t stream) {
  if (n < 0 || k < 1) throw std::invalid_argument("topk_encode_finish (CUDA): bad sizes");
  const int64_t total = n * k;
  if (total == 0) return;
  auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_acc(acc_dtype, [&](auto acc_tag) {
    using A = decltype(acc_tag);
    dispatch_float(out_dtype, "topk_encode_finish values", [&](auto out_tag) {
      using O = decltype(out_tag);
      const int threads = 256;
      const unsigned blocks = static_cast<unsigned>((total + threads - 1) / threads);
      finish_kernel<A, O><<<blocks, threads, 0, st>>>(
          reinterpret_cast<const A*>(run_vals), reinterpret_cast<const int32_t*>(run_idx), total,
          reinterpret_cast<typename CT<O>::raw*>(out_vals),
          reinterpret_cast<int32_t*>(out_idx));
    });
  });
  check_launch("topk_encode_finish (CUDA)");
}

}  // namespace cuda
}  // namespace actspace
