// sparse_decode CUDA kernels (compiled with nvcc, or on the host by the emulated core).
//
// forward      : one block per (row, column tile); each thread owns V consecutive columns
//                (16-byte vector loads of W rows) and walks the row's k slots.
// grad_values  : one warp per slot (n, j): a vectorised dot product <grad_out[n], W[m]>
//                reduced with warp shuffles.
// grad_W       : atomics (one block per (row, column tile), atomicAdd into an acc-type
//                buffer; fast, order not fixed) or deterministic, latent-major from a CSR
//                built by Python with a stable sort. Deterministic: a latent with at most
//                `chunk` slots is one work item (one block per column tile sums its slots in
//                CSR order and writes gW[m] directly); a popular latent (a latent firing on
//                every row would otherwise be one serial chain of N slots) is split into
//                fixed chunks of its CSR slot list, each summed by its own block into a
//                partial row (acc type, at most N*k/chunk + N*k/(chunk+1) rows: never an
//                [M, d] buffer), then a second kernel adds each split latent's partials in
//                chunk order. Chunk boundaries come from the CSR offsets, never from
//                scheduling, and no atomics: the same bits on every run. The work list is
//                built with torch ops, no host sync (ops/sparse_decode.py, grad_W_plan).
// Launchers enqueue on the caller's stream, allocate nothing and never synchronise.
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/cuda.cuh"
#include "sparse_decode/sparse_decode.h"

namespace actspace {
namespace cuda {
namespace {

constexpr int kThreads = 128;

template <typename T, typename I, int V>
__global__ void forward_kernel(const typename CT<T>::acc* __restrict__ values,
                               const I* __restrict__ idx, const typename CT<T>::raw* __restrict__ W,
                               int64_t ldw, const typename CT<T>::acc* __restrict__ bias,
                               typename CT<T>::raw* __restrict__ out, int64_t k, int64_t M,
                               int64_t d) {
  using A = typename CT<T>::acc;
  using R = typename CT<T>::raw;
  const int64_t n = blockIdx.x;
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  if (c >= d) return;
  A acc[V];
#pragma unroll
  for (int t = 0; t < V; ++t) acc[t] = bias ? bias[c + t] : A(0);
  const I* ir = idx + n * k;
  const A* vr = values + n * k;
#pragma unroll 4
  for (int64_t j = 0; j < k; ++j) {
    const int64_t m = static_cast<int64_t>(ir[j]);
    if (m < 0 || m >= M) continue;  // empty slot (or a bad index: backstop, skipped)
    const A v = vr[j];
    const Vec<R, V> w = vload<R, V>(W + m * ldw + c);
#pragma unroll
    for (int t = 0; t < V; ++t) acc[t] += v * CT<T>::ld(w.v[t]);
  }
  Vec<R, V> o;
#pragma unroll
  for (int t = 0; t < V; ++t) o.v[t] = CT<T>::st(acc[t]);
  *reinterpret_cast<Vec<R, V>*>(out + n * d + c) = o;
}

template <typename T, typename I, int V>
__global__ void grad_values_kernel(const typename CT<T>::acc* __restrict__ g,
                                   const I* __restrict__ idx,
                                   const typename CT<T>::raw* __restrict__ W, int64_t ldw,
                                   typename CT<T>::acc* __restrict__ gv, int64_t NK, int64_t k,
                                   int64_t M, int64_t d) {
  using A = typename CT<T>::acc;
  using R = typename CT<T>::raw;
  const int64_t slot = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (slot >= NK) return;  // whole warps exit together (slot is warp-uniform)
  const int64_t m = static_cast<int64_t>(idx[slot]);
  A s = A(0);
  if (m >= 0 && m < M) {
    const A* gr = g + (slot / k) * d;
    const R* w = W + m * ldw;
    for (int64_t c = static_cast<int64_t>(lane) * V; c < d; c += 32 * V) {
      const Vec<R, V> wv = vload<R, V>(w + c);
      const Vec<A, V> gvv = vload<A, V>(gr + c);
#pragma unroll
      for (int t = 0; t < V; ++t) s += gvv.v[t] * CT<T>::ld(wv.v[t]);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) gv[slot] = s;
}

template <typename A, typename I>
__global__ void grad_W_atomic_kernel(const A* __restrict__ g, const A* __restrict__ values,
                                     const I* __restrict__ idx, A* __restrict__ gacc, int64_t k,
                                     int64_t M, int64_t d) {
  const int64_t n = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= d) return;
  const A gc = g[n * d + c];
  for (int64_t j = 0; j < k; ++j) {
    const int64_t m = static_cast<int64_t>(idx[n * k + j]);
    if (m < 0 || m >= M) continue;
    atomicAdd(gacc + m * d + c, values[n * k + j] * gc);
  }
}

// Deterministic grad_W, pass 1: one block per (work item, column tile). An item is a whole
// latent (<= chunk slots: written straight to gW[m] in W's type, zero rows included) or one
// chunk of a split latent's CSR slots (chunk boundaries at offsets[m] + q * chunk, fixed by the
// CSR, not by scheduling): written to its own partial row in the acc type. Within an item the
// slots are summed in CSR order. The grid is sized by a bound; items past the last one are
// marked with latent M and exit. plan: see sparse_decode_grad_W_csr in sparse_decode.h.
template <typename T, int V>
__global__ void grad_W_items_kernel(const typename CT<T>::acc* __restrict__ g,
                                    const typename CT<T>::acc* __restrict__ values,
                                    const int32_t* __restrict__ offsets,
                                    const int32_t* __restrict__ order, int64_t k,
                                    const int32_t* __restrict__ item_latent,
                                    const int32_t* __restrict__ item_first,
                                    const int32_t* __restrict__ part_first, int64_t chunk,
                                    int64_t M, typename CT<T>::raw* __restrict__ gW,
                                    typename CT<T>::acc* __restrict__ part, int64_t d) {
  using A = typename CT<T>::acc;
  using R = typename CT<T>::raw;
  const int64_t item = blockIdx.x;
  const int64_t m = item_latent[item];
  if (m >= M) return;  // past the last item
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  if (c >= d) return;
  const int64_t q = item - item_first[m];  // chunk number within the latent
  const int64_t s0 = offsets[m] + q * chunk;
  const int64_t s1 = min(static_cast<int64_t>(offsets[m + 1]), s0 + chunk);
  A acc[V];
#pragma unroll
  for (int t = 0; t < V; ++t) acc[t] = A(0);
  for (int64_t s = s0; s < s1; ++s) {  // fixed order: deterministic
    const int64_t slot = order[s];
    const A v = values[slot];
    const Vec<A, V> gr = vload<A, V>(g + (slot / k) * d + c);
#pragma unroll
    for (int t = 0; t < V; ++t) acc[t] += v * gr.v[t];
  }
  const int64_t p = part_first[m];
  if (p < 0) {  // a latent in one item: its gW row, directly
    Vec<R, V> o;
#pragma unroll
    for (int t = 0; t < V; ++t) o.v[t] = CT<T>::st(acc[t]);
    vstore<R, V>(gW + m * d + c, o);
  } else {
    Vec<A, V> o;
#pragma unroll
    for (int t = 0; t < V; ++t) o.v[t] = acc[t];
    vstore<A, V>(part + (p + q) * d + c, o);
  }
}

// Pass 2: one block per (split latent, column tile) sums the latent's partial rows in chunk
// order (so in slot order chunk by chunk: the same bits on every run) into gW[m].
template <typename T, int V>
__global__ void grad_W_split_finish(const typename CT<T>::acc* __restrict__ part,
                                    const int32_t* __restrict__ offsets,
                                    const int32_t* __restrict__ split_latent,
                                    const int32_t* __restrict__ part_first, int64_t chunk,
                                    int64_t M, typename CT<T>::raw* __restrict__ gW, int64_t d) {
  using A = typename CT<T>::acc;
  using R = typename CT<T>::raw;
  const int64_t m = split_latent[blockIdx.x];
  if (m >= M) return;  // past the last split latent
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  if (c >= d) return;
  const int64_t chunks = (offsets[m + 1] - offsets[m] + chunk - 1) / chunk;
  const A* pr = part + static_cast<int64_t>(part_first[m]) * d + c;
  A acc[V];
#pragma unroll
  for (int t = 0; t < V; ++t) acc[t] = A(0);
  for (int64_t q = 0; q < chunks; ++q) {
    const Vec<A, V> x = vload<A, V>(pr + q * d);
#pragma unroll
    for (int t = 0; t < V; ++t) acc[t] += x.v[t];
  }
  Vec<R, V> o;
#pragma unroll
  for (int t = 0; t < V; ++t) o.v[t] = CT<T>::st(acc[t]);
  vstore<R, V>(gW + m * d + c, o);
}

// ---------------------------------------------------------------- host helpers
// Vector width: 16 bytes of R when every row start is aligned, else scalar accesses.
bool can_vec(int64_t V, int64_t d, int64_t ldw, std::initializer_list<const void*> ptrs) {
  return d % V == 0 && ldw % V == 0 && aligned_to(16, ptrs);
}

dim3 tiles(int64_t rows, int64_t d, int V) {
  return dim3(static_cast<unsigned>(rows),
              static_cast<unsigned>((d / V + kThreads - 1) / kThreads));
}

}  // namespace

void sparse_decode_forward(const void* values, const void* indices, int idx_code,
                           const void* W, int64_t ldw, int w_code, const void* bias, void* out,
                           int64_t N, int64_t k, int64_t M, int64_t d, void* stream) {
  if (N == 0) return;
  auto st = as_stream(stream);
  dispatch_float(w_code, "sparse_decode (CUDA): W", [&](auto tag) {
    using T = decltype(tag);
    using A = typename CT<T>::acc;
    using R = typename CT<T>::raw;
    constexpr int V = 16 / sizeof(R);
    dispatch_index(idx_code, "sparse_decode (CUDA): indices", [&](auto itag) {
      using I = decltype(itag);
      auto va = static_cast<const A*>(values);
      auto ip = static_cast<const I*>(indices);
      auto wp = static_cast<const R*>(W);
      auto bp = static_cast<const A*>(bias);
      auto op = static_cast<R*>(out);
      // bias is read one scalar at a time: no alignment needed beyond its type
      if (can_vec(V, d, ldw, {W, out})) {
        ACTSPACE_LAUNCH(tiles(N, d, V), kThreads, 0, st, forward_kernel<T, I, V>)(va, ip, wp, ldw, bp, op, k, M, d);
      } else {
        ACTSPACE_LAUNCH(tiles(N, d, 1), kThreads, 0, st, forward_kernel<T, I, 1>)(va, ip, wp, ldw, bp, op, k, M, d);
      }
    });
  });
  check_launch("sparse_decode_forward");
}

void sparse_decode_grad_values(const void* grad_out, const void* indices, int idx_code,
                               const void* W, int64_t ldw, int w_code, void* grad_values,
                               int64_t N, int64_t k, int64_t M, int64_t d, void* stream) {
  const int64_t NK = N * k;
  if (NK == 0) return;
  auto st = as_stream(stream);
  const unsigned blocks = static_cast<unsigned>((NK * 32 + kThreads - 1) / kThreads);
  dispatch_float(w_code, "sparse_decode (CUDA): W", [&](auto tag) {
    using T = decltype(tag);
    using A = typename CT<T>::acc;
    using R = typename CT<T>::raw;
    // V limited so that V elements of both R and A fit a 16-byte access... or two of A
    constexpr int V = 16 / sizeof(A);
    dispatch_index(idx_code, "sparse_decode (CUDA): indices", [&](auto itag) {
      using I = decltype(itag);
      auto gp = static_cast<const A*>(grad_out);
      auto ip = static_cast<const I*>(indices);
      auto wp = static_cast<const R*>(W);
      auto op = static_cast<A*>(grad_values);
      if (can_vec(V, d, ldw, {W, grad_out})) {
        ACTSPACE_LAUNCH(blocks, kThreads, 0, st, grad_values_kernel<T, I, V>)(gp, ip, wp, ldw, op, NK, k, M, d);
      } else {
        ACTSPACE_LAUNCH(blocks, kThreads, 0, st, grad_values_kernel<T, I, 1>)(gp, ip, wp, ldw, op, NK, k, M, d);
      }
    });
  });
  check_launch("sparse_decode_grad_values");
}

void sparse_decode_grad_W_atomic(const void* grad_out, const void* values, const void* indices,
                                 int idx_code, int acc_code, void* grad_W_acc, int64_t N,
                                 int64_t k, int64_t M, int64_t d, void* stream) {
  if (N == 0 || k == 0) return;
  auto st = as_stream(stream);
  auto launch = [&](auto atag) {
    using A = decltype(atag);
    dispatch_index(idx_code, "sparse_decode (CUDA): indices", [&](auto itag) {
      using I = decltype(itag);
      ACTSPACE_LAUNCH(tiles(N, d, 1), kThreads, 0, st, grad_W_atomic_kernel<A, I>)(
          static_cast<const A*>(grad_out), static_cast<const A*>(values),
          static_cast<const I*>(indices), static_cast<A*>(grad_W_acc), k, M, d);
    });
  };
  dispatch_acc(acc_code, "sparse_decode_grad_W_atomic (CUDA): accumulator", launch);
  check_launch("sparse_decode_grad_W_atomic");
}

void sparse_decode_grad_W_csr(const void* grad_out, const void* values, const int32_t* offsets,
                              const int32_t* order, int64_t k, const int32_t* plan,
                              int64_t n_items, int64_t n_split, int64_t chunk, int w_code,
                              void* grad_W, void* part, int64_t M, int64_t d, void* stream) {
  if (M == 0 || d == 0) return;
  if (chunk < 1) throw std::invalid_argument("sparse_decode_grad_W_csr (CUDA): chunk must be >= 1");
  if (n_items < M)
    throw std::invalid_argument("sparse_decode_grad_W_csr (CUDA): n_items must be >= M");
  auto st = as_stream(stream);
  const int32_t* item_latent = plan;
  const int32_t* item_first = plan + n_items;
  const int32_t* part_first = item_first + M;
  const int32_t* split_latent = part_first + M;
  dispatch_float(w_code, "sparse_decode (CUDA): W", [&](auto tag) {
    using T = decltype(tag);
    using A = typename CT<T>::acc;
    using R = typename CT<T>::raw;
    constexpr int V = 16 / sizeof(A);
    auto gp = static_cast<const A*>(grad_out);
    auto vp = static_cast<const A*>(values);
    auto op = static_cast<R*>(grad_W);
    auto pp = static_cast<A*>(part);
    auto run = [&](auto vtag) {
      constexpr int W = decltype(vtag)::value;
      ACTSPACE_LAUNCH(tiles(n_items, d, W), kThreads, 0, st, grad_W_items_kernel<T, W>)(
          gp, vp, offsets, order, k, item_latent, item_first, part_first, chunk, M, op, pp, d);
      check_launch("sparse_decode_grad_W_csr (items)");
      if (n_split > 0) {
        ACTSPACE_LAUNCH(tiles(n_split, d, W), kThreads, 0, st, grad_W_split_finish<T, W>)(
            pp, offsets, split_latent, part_first, chunk, M, op, d);
        check_launch("sparse_decode_grad_W_csr (split finish)");
      }
    };
    if (can_vec(V, d, d, {grad_out, grad_W, part})) {
      run(std::integral_constant<int, V>());
    } else {
      run(std::integral_constant<int, 1>());
    }
  });
}

}  // namespace cuda
}  // namespace actspace
