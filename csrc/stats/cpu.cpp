// stats CPU kernels. Compiled once per ISA into namespace actspace::ACTSPACE_ISA.
//
// moments: the input is cut into tiles of rows x CB channels (whole rows for d <= CB, so a
// tile is one contiguous stream for the prefetcher) that stay in L2. Per tile, pass 1
// gathers the finite count, sum, min, max, zero and non-finite counts in the input's
// precision (exact except the sum, which only picks the shift c); pass 2 (from cache) sums
// the powers of the deviations from c in float64, and the exact S1 = sum(x - c) corrects
// for c not being the exact mean. The tile's central moments are then Chan-merged into a
// running float64 state. So float32 inputs with a large mean keep M2..M4 to float64
// rounding (no cancellation: deviations are taken from the tile mean, not from zero; a
// float32 sum of squares would lose it all). Loops run over contiguous channels so the
// compiler vectorises them with masks. OpenMP splits the work into (channel block, row
// range) tasks whose states are merged in row order at the end.
//
// latent: entries that fire are bucketed by latent with a counting sort (stable, so each
// bucket is in token order), then every latent updates its own counts, sums, histogram and
// top-T list: latent-parallel, no races, no atomics.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "stats/stats.h"

namespace actspace {
namespace ACTSPACE_ISA {

namespace {

constexpr int64_t CB = 1024;        // channels per tile (most widths: whole rows, so a
                                    // tile is one contiguous stream the prefetcher follows)
constexpr int64_t TILE = 64 * 1024; // elements per tile (256 KiB of float32: stays in L2)

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Rows per tile for a block of w channels.
inline int64_t tile_rows(int64_t w) { return std::max<int64_t>(16, std::min<int64_t>(1024, TILE / w)); }

// Running moments of one (channel block, row range) task, structure of arrays [CB].
struct Acc {
  double n[CB], mean[CB], m2[CB], m3[CB], m4[CB], mn[CB], mx[CB], zeros[CB], nonfin[CB];
  void reset() {
    for (int64_t j = 0; j < CB; ++j) {
      n[j] = mean[j] = m2[j] = m3[j] = m4[j] = zeros[j] = nonfin[j] = 0;
      mn[j] = INFINITY;
      mx[j] = -INFINITY;
    }
  }
};

// Per-thread sums of one tile, [CB] each. Pass 1 runs in the input's own type (float or
// double): counts stay exact (tiles have < 2^24 rows), min/max are exact, and the sum only
// gives the shift c, whose error S1 corrects exactly; so float32 data get 16 lanes there.
struct TileSums {
  alignas(64) unsigned char pass1[6 * CB * sizeof(double)];
  alignas(64) double c[CB], s1[CB], s2[CB], s3[CB], s4[CB];
};

// One tile: rows x w values of type T (float or double) with row stride ld, folded into a.
template <typename T>
void tile_moments(const T* x, int64_t ld, int64_t rows, int64_t w, Acc& a, TileSums& t) {
  T* __restrict__ cnt = reinterpret_cast<T*>(t.pass1);
  T* __restrict__ sum = cnt + CB;
  T* __restrict__ mn = cnt + 2 * CB;
  T* __restrict__ mx = cnt + 3 * CB;
  T* __restrict__ zer = cnt + 4 * CB;
  T* __restrict__ nf = cnt + 5 * CB;
  double* __restrict__ c = t.c; double* __restrict__ s1 = t.s1; double* __restrict__ s2 = t.s2;
  double* __restrict__ s3 = t.s3; double* __restrict__ s4 = t.s4;
  const T big = std::numeric_limits<T>::max(), inf = std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < w; ++j) {
    cnt[j] = sum[j] = zer[j] = nf[j] = 0;
    s1[j] = s2[j] = s3[j] = s4[j] = 0;
    mn[j] = inf;
    mx[j] = -inf;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * ld;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) {
      const T v = row[j];
      const bool fin = std::fabs(v) <= big;  // false for +-inf and NaN
      cnt[j] += fin ? T(1) : T(0);
      sum[j] += fin ? v : T(0);
      mn[j] = (fin && v < mn[j]) ? v : mn[j];
      mx[j] = (fin && v > mx[j]) ? v : mx[j];
      zer[j] += (v == 0) ? T(1) : T(0);
      nf[j] += fin ? T(0) : T(1);
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    const double m = cnt[j] > 0 ? static_cast<double>(sum[j]) / cnt[j] : 0.0;
    // a float sum may overflow: the midrange is then a finite shift as good as any
    c[j] = std::fabs(m) <= DBL_MAX ? m : 0.5 * (double(mn[j]) + double(mx[j]));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * ld;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) {
      const double v = static_cast<double>(row[j]);
      const bool fin = std::fabs(v) <= DBL_MAX;
      const double dv = fin ? v - c[j] : 0.0;
      const double d2 = dv * dv;
      s1[j] += dv;
      s2[j] += d2;
      s3[j] += d2 * dv;
      s4[j] += d2 * d2;
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    double mean, m2, m3, m4;
    shifted_to_central(cnt[j], c[j], s1[j], s2[j], s3[j], s4[j], mean, m2, m3, m4);
    chan_merge(a.n[j], a.mean[j], a.m2[j], a.m3[j], a.m4[j], cnt[j], mean, m2, m3, m4);
    a.mn[j] = std::min(a.mn[j], static_cast<double>(mn[j]));
    a.mx[j] = std::max(a.mx[j], static_cast<double>(mx[j]));
    a.zeros[j] += zer[j];
    a.nonfin[j] += nf[j];
  }
}

// Half-precision rows -> float tile (exact), so the tile passes run on float.
inline void to_float(const bf16_t* src, float* dst, int64_t w) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t j = 0; j < w; ++j) {
    const uint32_t u = static_cast<uint32_t>(s[j]) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    dst[j] = f;
  }
}
inline void to_float(const f16_t* src, float* dst, int64_t w) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  int64_t j = 0;
#if defined(__F16C__)
  for (; j + 8 <= w; j += 8)
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j))));
#endif
  for (; j < w; ++j) dst[j] = f16_to_float(s[j]);
}

template <typename T>
void task_moments(const T* x, int64_t ld, int64_t r0, int64_t r1, int64_t j0, int64_t w,
                  Acc& a, TileSums& sums, float* tile) {
  const int64_t RB = tile_rows(w);
  for (int64_t r = r0; r < r1; r += RB) {
    const int64_t rows = std::min(RB, r1 - r);
    const T* base = x + r * ld + j0;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      tile_moments<T>(base, ld, rows, w, a, sums);
    } else {
      for (int64_t i = 0; i < rows; ++i) to_float(base + i * ld, tile + i * w, w);
      tile_moments<float>(tile, w, rows, w, a, sums);
    }
  }
}

template <typename T>
void moments_impl(const T* x, int64_t N, int64_t d, int64_t ld, const MomentState& st) {
  const int64_t nblk = (d + CB - 1) / CB, RB = tile_rows(std::min(CB, d));
  const int64_t nchunk = (N + RB - 1) / RB;
  const int nth = max_threads();
  // Enough row ranges that every thread has work even when d is a single block.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nchunk, (2 * nth + nblk - 1) / nblk));
  const int64_t tasks = nblk * parts;
  std::vector<Acc> acc(tasks);
  const bool half = !(std::is_same_v<T, float> || std::is_same_v<T, double>);
#pragma omp parallel
  {
    std::vector<float> tile(half ? TILE + CB : 0);
    std::unique_ptr<TileSums> sums(new TileSums);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / parts, p = t % parts;
      // row range p of parts, aligned to RB so tiles are whole
      const int64_t r0 = std::min(N, (nchunk * p / parts) * RB);
      const int64_t r1 = std::min(N, (nchunk * (p + 1) / parts) * RB);
      const int64_t j0 = b * CB, w = std::min(CB, d - j0);
      acc[t].reset();
      task_moments<T>(x, ld, r0, r1, j0, w, acc[t], *sums, tile.data());
    }
  }
  // Merge the row ranges of each block in order into the state.
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t j0 = b * CB, w = std::min(CB, d - j0);
    for (int64_t p = 0; p < parts; ++p) {
      const Acc& a = acc[b * parts + p];
      for (int64_t j = 0; j < w; ++j) {
        const int64_t c = j0 + j;
        chan_merge(st.count[c], st.mean[c], st.m2[c], st.m3[c], st.m4[c], a.n[j], a.mean[j],
                   a.m2[j], a.m3[j], a.m4[j]);
        st.min[c] = std::min(st.min[c], a.mn[j]);
        st.max[c] = std::max(st.max[c], a.mx[j]);
        st.zeros[c] += static_cast<int64_t>(a.zeros[j]);
        st.nonfinite[c] += static_cast<int64_t>(a.nonfin[j]);
      }
    }
    for (int64_t c = j0; c < j0 + w; ++c) {
      // absmax over finite values = max(|min|, |max|); stays 0 for a channel with none.
      if (st.count[c] > 0) st.absmax[c] = std::max({st.absmax[c], -st.min[c], st.max[c]});
    }
  }
}

// ------------------------------------------------------------------ latent statistics
template <typename T> inline double load_d(const T* p) { return static_cast<double>(Scalar<T>::load(p)); }

template <typename V, typename I>
int64_t latent_impl(const V* values, int64_t vld, const I* indices, int64_t ild, int64_t N,
                    int64_t k, int64_t M, int64_t T, int64_t nbins, double lo, double hi,
                    int64_t tok0, int64_t* count, double* sum, double* sumsq, int64_t* hist,
                    float* top_values, int64_t* top_tokens, int64_t* ws) {
  int64_t* off = ws;           // [M + 1] bucket starts
  int64_t* ent = ws + M + 1;   // [N * k] entries (n << kb) | j, bucketed by latent
  int kb = 0;                  // shift instead of a division by k when unpacking
  while ((int64_t(1) << kb) < k) ++kb;
  const int64_t jmask = (int64_t(1) << kb) - 1;
  // Counting sort over contiguous row ranges, one per thread: per-thread counts, then each
  // thread's cursor for latent m starts after the earlier threads' entries, so every
  // bucket stays in row order (the top-T does not need it; it keeps the sums' order fixed).
  const int nth = N * k >= (int64_t(1) << 15) ? max_threads() : 1;
  std::vector<int64_t> cur(static_cast<size_t>(nth) * M, 0);  // [nth, M]
  std::vector<int64_t> bad(nth, 0);
#pragma omp parallel num_threads(nth)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    const int64_t n0 = N * t / nth, n1 = N * (t + 1) / nth;
    int64_t* c = cur.data() + static_cast<size_t>(t) * M;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t m = static_cast<int64_t>(indices[n * ild + j]);
        if (m < 0) continue;
        if (m >= M) { ++bad[t]; continue; }
        if (load_d(values + n * vld + j) > 0) ++c[m];  // NaN never fires
      }
#pragma omp barrier
#pragma omp single
    {
      int64_t run = 0;
      for (int64_t m = 0; m < M; ++m) {
        off[m] = run;
        for (int u = 0; u < nth; ++u) {
          const int64_t n_u = cur[static_cast<size_t>(u) * M + m];
          cur[static_cast<size_t>(u) * M + m] = run;
          run += n_u;
        }
      }
      off[M] = run;
    }
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t m = static_cast<int64_t>(indices[n * ild + j]);
        if (m >= 0 && m < M && load_d(values + n * vld + j) > 0) ent[c[m]++] = (n << kb) | j;
      }
  }
#pragma omp parallel
  {
    std::vector<double> tv(T);
    std::vector<int64_t> tt(T);
#pragma omp for schedule(dynamic, 256)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t e0 = off[m], e1 = off[m + 1];
      if (e0 == e1) continue;
      float* mv = top_values + m * T;
      int64_t* mt = top_tokens + m * T;
      for (int64_t t = 0; t < T; ++t) { tv[t] = mv[t]; tt[t] = mt[t]; }
      double s = 0, ss = 0;
      int64_t* h = hist + m * nbins;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t n = ent[e] >> kb, j = ent[e] & jmask;
        const double v = load_d(values + n * vld + j);
        const int64_t tok = tok0 + n;
        s += v;
        ss += square_rn(v);
        ++h[latent_bin(std::log10(v), lo, hi, nbins)];
        if (T > 0 && top_before(v, tok, tv[T - 1], tt[T - 1])) {  // insertion into the sorted list
          int64_t p = T - 1;
          for (; p > 0 && top_before(v, tok, tv[p - 1], tt[p - 1]); --p) {
            tv[p] = tv[p - 1];
            tt[p] = tt[p - 1];
          }
          tv[p] = v;
          tt[p] = tok;
        }
      }
      count[m] += e1 - e0;
      sum[m] += s;
      sumsq[m] += ss;
      for (int64_t t = 0; t < T; ++t) { mv[t] = static_cast<float>(tv[t]); mt[t] = tt[t]; }
    }
  }
  int64_t nbad = 0;
  for (int64_t b : bad) nbad += b;
  return nbad;
}

}  // namespace

void moments_update(const void* x, int dtype, int64_t N, int64_t d, int64_t ld,
                    const MomentState& st) {
  if (N <= 0 || d <= 0) return;
  dispatch_float(dtype, "moments_update: x", [&](auto tag) {
    using T = decltype(tag);
    moments_impl<T>(static_cast<const T*>(x), N, d, ld, st);
  });
}

int64_t latent_update(const void* values, int vdtype, int64_t vld, const void* indices,
                      int idtype, int64_t ild, int64_t N, int64_t k, int64_t M, int64_t T,
                      int64_t nbins, double lo, double hi, int64_t token_offset,
                      int64_t* count, double* sum, double* sumsq, int64_t* hist,
                      float* top_values, int64_t* top_tokens, int64_t* ws) {
  if (N <= 0 || k <= 0) return 0;
  int64_t bad = 0;
  dispatch_float(vdtype, "latent_update: values", [&](auto tag) {
    using V = decltype(tag);
    const V* v = static_cast<const V*>(values);
    bad = dispatch_index(idtype, "latent_update: indices", [&](auto itag) {
      using I = decltype(itag);
      return latent_impl(v, vld, static_cast<const I*>(indices), ild, N, k, M, T, nbins, lo, hi,
                         token_offset, count, sum, sumsq, hist, top_values, top_tokens, ws);
    });
  });
  return bad;
}

}  // namespace ACTSPACE_ISA
}  // namespace actspace
