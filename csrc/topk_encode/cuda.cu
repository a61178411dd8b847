// topk_encode CUDA kernels (compiled with nvcc, or on the host by the emulated core).
//
// merge: one warp per row, kWarpsPerBlock (8) rows per block. The row's running top-k
// (k <= 256) lives in shared memory as a list sorted best first (ties: lower index first).
// Each lane reads V consecutive tile columns with one 16-byte load (V = 16 / element size,
// when rows are 16-byte aligned; V = 1 otherwise) and has the next chunk's load in flight
// while the current one is merged. A ballot of "one of my V values > current k-th" names the
// lanes worth visiting; the warp visits them in lane order and their V values in column
// order, so candidates arrive in increasing column index and a newcomer that ties an entry
// goes after it (position = count of entries >= the key; then a one-slot shift).
// Launched on the caller's stream; nothing synchronises.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/cuda.cuh"
#include "topk_encode/topk_encode.h"

namespace actspace {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxK = 256;
constexpr unsigned kFull = 0xffffffffu;

template <typename A, bool RELU, bool SCALE, bool THR>
__device__ __forceinline__ A activate(A v, int64_t j, const A* __restrict__ b_enc,
                                      const A* __restrict__ scale, const A* __restrict__ thr) {
  v += b_enc[j];
  if (SCALE) v *= scale[j];
  if (RELU) v = v < A(0) ? A(0) : v;  // keeps NaN
  if (THR) v = v > thr[j] ? v : -static_cast<A>(INFINITY);
  return v;
}

// The V raw tile values of a lane at column j0; columns past `cols` are not read (they come
// back as zeros that the caller masks out).
template <typename R, int V>
__device__ __forceinline__ Vec<R, V> load_chunk(const R* __restrict__ t, int64_t j0, int64_t cols) {
  Vec<R, V> w;
  if (j0 + V <= cols) return vload<R, V>(t + j0);
#pragma unroll
  for (int q = 0; q < V; ++q) w.v[q] = j0 + q < cols ? t[j0 + q] : R();
  return w;
}

// T: host storage type of the tile (see CT in common/cuda.cuh); A its accumulation type.
template <typename T, typename A, int V, bool RELU, bool SCALE, bool THR>
__global__ void merge_kernel(const typename CT<T>::raw* __restrict__ tile, int64_t rows,
                             int64_t cols, int64_t ld, int64_t row0, int64_t m0,
                             const A* __restrict__ b_enc, const A* __restrict__ scale,
                             const A* __restrict__ thr, int k, A* __restrict__ run_vals,
                             int32_t* __restrict__ run_idx) {
  using R = typename CT<T>::raw;
  ACTSPACE_DYNAMIC_SMEM(unsigned char, smem);
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
  const R* t = tile + r * ld;
  constexpr int64_t kStep = 32 * V;
  Vec<R, V> next = load_chunk<R, V>(t, static_cast<int64_t>(lane) * V, cols);
  for (int64_t c0 = 0; c0 < cols; c0 += kStep) {
    const int64_t j0 = c0 + static_cast<int64_t>(lane) * V;
    const Vec<R, V> cur = next;
    if (c0 + kStep < cols) next = load_chunk<R, V>(t, j0 + kStep, cols);  // in flight meanwhile
    A v[V];
    bool any = false;
#pragma unroll
    for (int q = 0; q < V; ++q) {
      v[q] = j0 + q < cols ? activate<A, RELU, SCALE, THR>(static_cast<A>(CT<T>::ld(cur.v[q])),
                                                           j0 + q, b_enc, scale, thr)
                           : static_cast<A>(NAN);
      any = any || v[q] > kth;  // NaN compares false: never selected
    }
    unsigned mask = __ballot_sync(kFull, any);
    while (mask) {
      const int src = __ffs(mask) - 1;
      mask &= mask - 1;
#pragma unroll
      for (int q = 0; q < V; ++q) {
        const A nv = __shfl_sync(kFull, v[q], src);
        if (!(nv > kth)) continue;  // kth is warp-uniform, so is this branch
        int cnt = 0;
        for (int p = lane; p < k; p += 32) cnt += sv[p] >= nv;
        for (int o = 16; o > 0; o >>= 1) cnt += __shfl_xor_sync(kFull, cnt, o);
        const int pos = cnt;  // < k because nv > sv[k-1]
        A tv[kMaxK / 32];
        int32_t ti[kMaxK / 32];
#pragma unroll
        for (int s = 0; s < kMaxK / 32; ++s) {
          const int p = lane + 32 * s;
          if (p >= pos && p < k - 1) { tv[s] = sv[p]; ti[s] = si[p]; }
        }
        __syncwarp();
#pragma unroll
        for (int s = 0; s < kMaxK / 32; ++s) {
          const int p = lane + 32 * s;
          if (p >= pos && p < k - 1) { sv[p + 1] = tv[s]; si[p + 1] = ti[s]; }
        }
        if (lane == 0) {
          sv[pos] = nv;
          si[pos] = static_cast<int32_t>(m0 + c0 + static_cast<int64_t>(src) * V + q);
        }
        __syncwarp();
        kth = sv[k - 1];
      }
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

template <typename T, typename A, int V>
void launch_merge(const typename CT<T>::raw* tile, int64_t rows, int64_t cols, int64_t ld,
                  int64_t row0, int64_t m0, const A* b, const A* s, const A* th, bool relu, int k,
                  A* rv, int32_t* ri, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const dim3 block(kWarpsPerBlock * 32);
  const size_t shmem = static_cast<size_t>(kWarpsPerBlock) * k * (sizeof(A) + sizeof(int32_t));
  const int code = (relu ? 4 : 0) | (s ? 2 : 0) | (th ? 1 : 0);
  switch (code) {
#define ACTSPACE_CASE(c, R, S, H)                                                              \
  case c:                                                                                      \
    ACTSPACE_LAUNCH(grid, block, shmem, stream, merge_kernel<T, A, V, R, S, H>)(              \
        tile, rows, cols, ld, row0, m0, b, s, th, k, rv, ri);                                  \
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
}

}  // namespace

void topk_encode_merge(const void* tile, int tile_dtype, int64_t rows, int64_t cols, int64_t ld,
                       int64_t row0, int64_t m0, const void* b_enc, const void* scale,
                       const void* threshold, int acc_dtype, bool relu, int64_t k,
                       void* run_vals, int32_t* run_idx, void* stream) {
  if (rows < 0 || cols < 0 || ld < cols || k < 1 || k > kMaxK ||
      m0 + cols > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("topk_encode_merge (CUDA): bad sizes (k must be <= 256)");
  if (!b_enc) throw std::invalid_argument("topk_encode_merge (CUDA): b_enc is required");
  if (rows == 0 || cols == 0) return;
  dispatch_float(tile_dtype, "topk_encode_merge (CUDA): tile", [&](auto tile_tag) {
    using T = decltype(tile_tag);
    using A = typename CT<T>::acc;  // float64 tiles accumulate in float64, the rest in float32
    using R = typename CT<T>::raw;
    if (acc_dtype != DTypeOf<A>::code)
      throw std::invalid_argument(std::string("topk_encode_merge (CUDA): a ") +
                                  dtype_name(tile_dtype) + " tile needs a " +
                                  dtype_name(DTypeOf<A>::code) + " running state, got " +
                                  dtype_name(acc_dtype));
    constexpr int V = 16 / sizeof(R);
    auto tp = static_cast<const R*>(tile);
    auto b = static_cast<const A*>(b_enc);
    auto s = static_cast<const A*>(scale);
    auto th = static_cast<const A*>(threshold);
    auto rv = static_cast<A*>(run_vals);
    const int kk = static_cast<int>(k);
    if ((ld * static_cast<int64_t>(sizeof(R))) % 16 == 0 && aligned_to(16, {tile}))
      launch_merge<T, A, V>(tp, rows, cols, ld, row0, m0, b, s, th, relu, kk, rv, run_idx,
                            as_stream(stream));
    else
      launch_merge<T, A, 1>(tp, rows, cols, ld, row0, m0, b, s, th, relu, kk, rv, run_idx,
                            as_stream(stream));
  });
  check_launch("topk_encode_merge (CUDA)");
}

void topk_encode_finish(const void* run_vals, const int32_t* run_idx, int acc_dtype, int64_t n,
                        int64_t k, void* out_vals, int out_dtype, int32_t* out_idx,
                        void* stream) {
  if (n < 0 || k < 1) throw std::invalid_argument("topk_encode_finish (CUDA): bad sizes");
  const int64_t total = n * k;
  if (total == 0) return;
  dispatch_acc(acc_dtype, "topk_encode_finish (CUDA): running values", [&](auto acc_tag) {
    using A = decltype(acc_tag);
    dispatch_float(out_dtype, "topk_encode_finish (CUDA): values", [&](auto out_tag) {
      using O = decltype(out_tag);
      const int threads = 256;
      const unsigned blocks = static_cast<unsigned>((total + threads - 1) / threads);
      ACTSPACE_LAUNCH(dim3(blocks), dim3(threads), 0, as_stream(stream), finish_kernel<A, O>)(
          static_cast<const A*>(run_vals), run_idx, total,
          static_cast<typename CT<O>::raw*>(out_vals), out_idx);
    });
  });
  check_launch("topk_encode_finish (CUDA)");
}

}  // namespace cuda
}  // namespace actspace
