// sparse_decode CPU kernels. Compiled once per ISA into namespace actspace::ACTSPACE_ISA
// (generic, avx2, avx512): the inner loops over d are plain loops marked `omp simd` so
// each copy auto-vectorises for its instruction set; bf16/f16 are widened in the loop.
//
// Forward and grad_values are row-parallel gathers of W rows. grad_W is latent-major:
// Python hands in a CSR of the (n, j) slots sorted by latent (built here by counting
// sort), and each latent sums its contributions in CSR order, so the result is
// bitwise-repeatable whatever the thread count. When grad_values is wanted too it is
// fused into that pass (W[m] is read once per latent instead of once per slot).
#include <algorithm>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#ifdef __linux__
#include <sys/mman.h>
#endif
#endif

#include "sparse_decode/sparse_decode.h"

namespace actspace {
namespace ACTSPACE_ISA {
namespace {

// Storage traits: raw element type, accumulation type, widening load and narrowing store.
template <typename T> struct St;
template <> struct St<float> {
  using raw = float; using acc = float;
  static inline float ld(const float* p) { return *p; }
  static inline void st(float* p, float v) { *p = v; }
};
template <> struct St<double> {
  using raw = double; using acc = double;
  static inline double ld(const double* p) { return *p; }
  static inline void st(double* p, double v) { *p = v; }
};
template <> struct St<bf16_t> {
  using raw = uint16_t; using acc = float;
  static inline float ld(const uint16_t* p) {  // shift into the high half: vectorises
    const uint32_t u = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static inline void st(uint16_t* p, float v) { *p = float_to_bf16(v); }
};
template <> struct St<f16_t> {
  using raw = uint16_t; using acc = float;
  // Branch-free widening (vectorises, unlike _cvtsh_ss or the branchy f16_to_float):
  // shift exponent+mantissa into place and rebias by 2^112 (exact, subnormals included),
  // then patch inf/NaN and put the sign back.
  static inline float ld(const uint16_t* p) {
    const uint32_t h = *p, em = h & 0x7fffu;
    const uint32_t shifted = em << 13;
    float f;
    std::memcpy(&f, &shifted, 4);
    f *= 0x1p112f;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u = em >= 0x7c00u ? (shifted | 0x7f800000u) : u;
    u |= (h & 0x8000u) << 16;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static inline void st(uint16_t* p, float v) { *p = float_to_f16(v); }
};

// Accumulators live on the stack in tiles over d (no allocation; 4 KiB per thread).
template <typename A> constexpr int64_t tile() { return 4096 / sizeof(A); }

// How many slots ahead forward / grad_values prefetch the gathered W rows (8 was best of
// 1, 2, 4, 8, 16 at d=768, M=65536 on a 2-core AVX-512 machine).
constexpr int64_t kPrefetch = 8;

template <typename R>
inline void prefetch_row(const R* p, int64_t len) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < len * static_cast<int64_t>(sizeof(R)); b += 64) __builtin_prefetch(c + b);
}

inline bool bad_index(int64_t m, int64_t M) { return m < -1 || m >= M; }

template <typename T, typename I>
int64_t forward_impl(const typename St<T>::acc* __restrict values, const I* __restrict idx,
                     const typename St<T>::raw* __restrict W, int64_t ldw,
                     const typename St<T>::acc* __restrict bias,
                     typename St<T>::raw* __restrict out, int64_t N, int64_t k, int64_t M,
                     int64_t d) {
  using A = typename St<T>::acc;
  using R = typename St<T>::raw;
  constexpr int64_t DB = tile<A>();
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t n = 0; n < N; ++n) {
    alignas(64) A acc[DB];
    const I* ir = idx + n * k;
    const A* vr = values + n * k;
    for (int64_t d0 = 0; d0 < d; d0 += DB) {
      const int64_t len = std::min(DB, d - d0);
      if (bias) {
        for (int64_t t = 0; t < len; ++t) acc[t] = bias[d0 + t];
      } else {
        for (int64_t t = 0; t < len; ++t) acc[t] = A(0);
      }
      // Slots go in groups of 4 valid rows: one pass over acc per group (4x less acc
      // traffic, 4 independent row streams in flight); the sum order stays j-sequential.
      for (int64_t j = 0; j < k;) {
        const R* rows[4];
        A vs[4];
        int cnt = 0;
        for (; j < k && cnt < 4; ++j) {
          const int64_t m = static_cast<int64_t>(ir[j]);
          if (m < 0 || m >= M) {
            bad += (d0 == 0 && bad_index(m, M));
            continue;
          }
          rows[cnt] = W + m * ldw + d0;
          vs[cnt++] = vr[j];
        }
        // The gathered rows are random in W (far larger than cache): prefetch the rows
        // kPrefetch slots ahead, one cache line per row per 64-byte chunk of this group,
        // so DRAM latency overlaps the arithmetic without bursts of prefetches.
        // Past the row's end (in its last tile) the next row's first slots are fetched.
        const R* pf[4] = {nullptr, nullptr, nullptr, nullptr};
        for (int c = 0; c < 4; ++c) {
          const int64_t jp = j + kPrefetch - 4 + c;
          int64_t mp = -1, off = d0;
          if (jp < k) {
            mp = static_cast<int64_t>(ir[jp]);
          } else if (jp - k < k && n + 1 < N && d0 + len == d) {
            mp = static_cast<int64_t>(ir[k + jp - k]);
            off = 0;
          }
          if (mp >= 0 && mp < M) pf[c] = W + mp * ldw + off;
        }
        constexpr int64_t CH = 64 / sizeof(R);
        if (cnt == 4) {
          const R* __restrict r0 = rows[0]; const R* __restrict r1 = rows[1];
          const R* __restrict r2 = rows[2]; const R* __restrict r3 = rows[3];
          for (int64_t t0 = 0; t0 < len; t0 += CH) {
            for (int c = 0; c < 4; ++c)
              if (pf[c]) __builtin_prefetch(pf[c] + t0);
            const int64_t t1 = std::min(len, t0 + CH);
#pragma omp simd
            for (int64_t t = t0; t < t1; ++t) {
              A a = acc[t];
              a += vs[0] * St<T>::ld(r0 + t);
              a += vs[1] * St<T>::ld(r1 + t);
              a += vs[2] * St<T>::ld(r2 + t);
              a += vs[3] * St<T>::ld(r3 + t);
              acc[t] = a;
            }
          }
        } else {
          for (int c = 0; c < cnt; ++c) {
            const R* __restrict r = rows[c];
            const A v = vs[c];
#pragma omp simd
            for (int64_t t = 0; t < len; ++t) acc[t] += v * St<T>::ld(r + t);
          }
        }
      }
      typename St<T>::raw* o = out + n * d + d0;
      for (int64_t t = 0; t < len; ++t) St<T>::st(o + t, acc[t]);
    }
  }
  return bad;
}

template <typename T, typename I>
int64_t grad_values_impl(const typename St<T>::acc* __restrict g, const I* __restrict idx,
                         const typename St<T>::raw* __restrict W, int64_t ldw,
                         typename St<T>::acc* __restrict gv, int64_t N, int64_t k, int64_t M,
                         int64_t d) {
  using A = typename St<T>::acc;
  using R = typename St<T>::raw;
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t n = 0; n < N; ++n) {
    const A* __restrict gr = g + n * d;
    const I* ir = idx + n * k;
    A* gvr = gv + n * k;
    // Groups of 4 valid slots share each load of grad_out[n] (4 dot products per pass).
    for (int64_t j = 0; j < k;) {
      const R* rows[4];
      int64_t js[4];
      int cnt = 0;
      for (; j < k && cnt < 4; ++j) {
        const int64_t m = static_cast<int64_t>(ir[j]);
        if (j + kPrefetch < k) {  // random rows of a large W: fetch ahead
          const int64_t mp = static_cast<int64_t>(ir[j + kPrefetch]);
          if (mp >= 0 && mp < M) prefetch_row(W + mp * ldw, d);
        }
        if (m < 0 || m >= M) {
          bad += bad_index(m, M);
          gvr[j] = A(0);
          continue;
        }
        rows[cnt] = W + m * ldw;
        js[cnt++] = j;
      }
      if (cnt == 4) {
        const R* __restrict r0 = rows[0]; const R* __restrict r1 = rows[1];
        const R* __restrict r2 = rows[2]; const R* __restrict r3 = rows[3];
        A s0 = A(0), s1 = A(0), s2 = A(0), s3 = A(0);
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t t = 0; t < d; ++t) {
          const A x = gr[t];
          s0 += x * St<T>::ld(r0 + t);
          s1 += x * St<T>::ld(r1 + t);
          s2 += x * St<T>::ld(r2 + t);
          s3 += x * St<T>::ld(r3 + t);
        }
        gvr[js[0]] = s0; gvr[js[1]] = s1; gvr[js[2]] = s2; gvr[js[3]] = s3;
      } else {
        for (int c = 0; c < cnt; ++c) {
          const R* __restrict r = rows[c];
          A s = A(0);
#pragma omp simd reduction(+ : s)
          for (int64_t t = 0; t < d; ++t) s += gr[t] * St<T>::ld(r + t);
          gvr[js[c]] = s;
        }
      }
    }
  }
  return bad;
}

template <typename I>
int64_t build_csr_impl(const I* __restrict idx, int64_t total, int64_t M,
                       int32_t* __restrict offsets, int32_t* __restrict order) {
  std::fill(offsets, offsets + M + 1, 0);
  int64_t bad = 0;
  for (int64_t s = 0; s < total; ++s) {
    const int64_t m = static_cast<int64_t>(idx[s]);
    if (m < 0 || m >= M) { bad += bad_index(m, M); continue; }
    ++offsets[m + 1];
  }
  for (int64_t m = 0; m < M; ++m) offsets[m + 1] += offsets[m];
  // Fill with offsets[m] as the cursor of latent m (slots stay ascending), then shift back.
  for (int64_t s = 0; s < total; ++s) {
    const int64_t m = static_cast<int64_t>(idx[s]);
    if (m < 0 || m >= M) continue;
    order[offsets[m]++] = static_cast<int32_t>(s);
  }
  for (int64_t m = M; m > 0; --m) offsets[m] = offsets[m - 1];
  offsets[0] = 0;
  return bad;
}

// grad_W rows (M·d, far larger than cache) are written once and not read back here:
// float32 rows go out with streaming stores, skipping the read-for-ownership of each line.
template <typename T>
inline void store_row(typename St<T>::raw* out, const typename St<T>::acc* acc, int64_t len) {
  for (int64_t t = 0; t < len; ++t) St<T>::st(out + t, acc[t]);
}
template <>
inline void store_row<float>(float* out, const float* acc, int64_t len) {
  int64_t t = 0;
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(out) % 64 == 0)
    for (; t + 16 <= len; t += 16) _mm512_stream_ps(out + t, _mm512_loadu_ps(acc + t));
#elif defined(__AVX__)
  if (reinterpret_cast<uintptr_t>(out) % 32 == 0)
    for (; t + 8 <= len; t += 8) _mm256_stream_ps(out + t, _mm256_loadu_ps(acc + t));
#endif
  for (; t < len; ++t) out[t] = acc[t];
}

inline void store_fence() {
#if defined(__AVX512F__) || defined(__AVX__)
  _mm_sfence();  // order this thread's streaming stores before the region ends
#endif
}

template <typename T>
void grad_W_impl(const typename St<T>::acc* __restrict g, const typename St<T>::acc* __restrict values,
                 const int32_t* __restrict offsets, const int32_t* __restrict order, int64_t k,
                 const typename St<T>::raw* __restrict W, int64_t ldw,
                 typename St<T>::raw* __restrict gW, typename St<T>::acc* __restrict gv,
                 int64_t M, int64_t d) {
  using A = typename St<T>::acc;
  using R = typename St<T>::raw;
  constexpr int64_t DB = tile<A>();
  // Dynamic schedule: latent frequencies are very uneven in trained SAEs.
#pragma omp parallel
  {
    alignas(64) A acc[DB];
#pragma omp for schedule(dynamic, 32) nowait
  for (int64_t m = 0; m < M; ++m) {
    const int32_t beg = offsets[m], end = offsets[m + 1];
    R* __restrict out = gW + m * d;
    if (beg == end) {  // dead latent in this batch: its gradient is exactly zero
      for (int64_t d0 = 0; d0 < d; d0 += DB) {
        const int64_t len = std::min(DB, d - d0);
        for (int64_t t = 0; t < len; ++t) acc[t] = A(0);
        store_row<T>(out + d0, acc, len);
      }
      continue;
    }
    for (int64_t d0 = 0; d0 < d; d0 += DB) {
      const int64_t len = std::min(DB, d - d0);
      for (int64_t t = 0; t < len; ++t) acc[t] = A(0);
      const R* __restrict w = gv ? W + m * ldw + d0 : nullptr;
      for (int32_t s = beg; s < end; ++s) {
        const int64_t slot = order[s];
        const A v = values[slot];
        const A* __restrict gr = g + (slot / k) * d + d0;
        if (s + 1 < end) __builtin_prefetch(g + (order[s + 1] / k) * d + d0);
        if (gv) {
          A dot = A(0);
#pragma omp simd reduction(+ : dot)
          for (int64_t t = 0; t < len; ++t) {
            acc[t] += v * gr[t];
            dot += gr[t] * St<T>::ld(w + t);
          }
          gv[slot] = d0 == 0 ? dot : gv[slot] + dot;
        } else {
#pragma omp simd
          for (int64_t t = 0; t < len; ++t) acc[t] += v * gr[t];
        }
      }
      store_row<T>(out + d0, acc, len);
    }
  }
    store_fence();
  }
}

}  // namespace

int64_t sparse_decode_forward(const void* values, const void* indices, int idx_code,
                              const void* W, int64_t ldw, int w_code, const void* bias,
                              void* out, int64_t N, int64_t k, int64_t M, int64_t d) {
  int64_t bad = 0;
  dispatch_float(w_code, "sparse_decode W", [&](auto tag) {
    using T = decltype(tag);
    using A = typename St<T>::acc;
    using R = typename St<T>::raw;
    bad = dispatch_index(idx_code, "sparse_decode: indices", [&](auto itag) {
      using I = decltype(itag);
      return forward_impl<T, I>(static_cast<const A*>(values), static_cast<const I*>(indices),
                                static_cast<const R*>(W), ldw, static_cast<const A*>(bias),
                                static_cast<R*>(out), N, k, M, d);
    });
  });
  return bad;
}

int64_t sparse_decode_grad_values(const void* grad_out, const void* indices, int idx_code,
                                  const void* W, int64_t ldw, int w_code, void* grad_values,
                                  int64_t N, int64_t k, int64_t M, int64_t d) {
  int64_t bad = 0;
  dispatch_float(w_code, "sparse_decode W", [&](auto tag) {
    using T = decltype(tag);
    using A = typename St<T>::acc;
    using R = typename St<T>::raw;
    bad = dispatch_index(idx_code, "sparse_decode: indices", [&](auto itag) {
      using I = decltype(itag);
      return grad_values_impl<T, I>(static_cast<const A*>(grad_out),
                                    static_cast<const I*>(indices), static_cast<const R*>(W),
                                    ldw, static_cast<A*>(grad_values), N, k, M, d);
    });
  });
  return bad;
}

int64_t sparse_decode_build_csr(const void* indices, int idx_code, int64_t N, int64_t k,
                                int64_t M, int32_t* offsets, int32_t* order) {
  return dispatch_index(idx_code, "sparse_decode: indices", [&](auto itag) {
    using I = decltype(itag);
    return build_csr_impl<I>(static_cast<const I*>(indices), N * k, M, offsets, order);
  });
}

// grad_W is a fresh [M, d] buffer (192 MB at M=65536, d=768 f32): on 4 KB pages its first
// touch costs about as much as the whole gradient computation. Asking for transparent huge
// pages on its 2 MB-aligned interior (before anything touches it) cuts those faults ~500x.
static void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < int64_t(8 * kHuge)) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = (a + kHuge - 1) & ~(kHuge - 1), hi = (a + uintptr_t(bytes)) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // a hint only
#else
  (void)p;
  (void)bytes;
#endif
}

void sparse_decode_grad_W(const void* grad_out, const void* values, const int32_t* offsets,
                          const int32_t* order, int64_t k, const void* W, int64_t ldw,
                          int w_code, void* grad_W, void* grad_values, int64_t M, int64_t d) {
  dispatch_float(w_code, "sparse_decode W", [&](auto tag) {
    using T = decltype(tag);
    using A = typename St<T>::acc;
    using R = typename St<T>::raw;
    advise_huge_pages(grad_W, M * d * int64_t(sizeof(R)));
    grad_W_impl<T>(static_cast<const A*>(grad_out), static_cast<const A*>(values), offsets,
                   order, k, static_cast<const R*>(W), ldw, static_cast<R*>(grad_W),
                   static_cast<A*>(grad_values), M, d);
  });
}

}  // namespace ACTSPACE_ISA
}  // namespace actspace
