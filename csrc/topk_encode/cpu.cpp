// topk_encode CPU kernels. Compiled once per ISA into namespace actspace::ACTSPACE_ISA.
//
// merge: one pass over a pre-activation tile. Each row keeps a min-heap of its k best
// (value, index) pairs; the heap root is the current k-th best, so almost every element
// is rejected by one compare. Columns go in chunks of kChunk: the chunk's keys are
// computed and tested against the root in a branch-free, vectorisable loop, and only
// chunks with a hit take the scalar insert path.
// Ties: latents arrive in increasing index order, so a newcomer equal to the root loses
// (the root has the lower index): "v > root" is the whole test, and it also rejects NaN.
#include <algorithm>
#include <cstring>
#include <type_traits>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "topk_encode/topk_encode.h"

namespace actspace {
namespace ACTSPACE_ISA {
namespace {

constexpr int64_t kChunk = 16;  // one AVX-512 register of float32; bits of a uint32 mask

// a is worse than b: lower value, or equal value and higher index.
template <typename A>
inline bool worse(A av, int32_t ai, A bv, int32_t bi) {
  return av < bv || (av == bv && ai > bi);
}

// Replace the root of the min-heap (v[0..k), id[0..k)) by (nv, ni) and restore the heap.
template <typename A>
inline void heap_replace_root(A* v, int32_t* id, int64_t k, A nv, int32_t ni) {
  int64_t pos = 0;
  for (;;) {
    int64_t c = 2 * pos + 1;
    if (c >= k) break;
    if (c + 1 < k && worse(v[c + 1], id[c + 1], v[c], id[c])) ++c;
    if (!worse(v[c], id[c], nv, ni)) break;
    v[pos] = v[c];
    id[pos] = id[c];
    pos = c;
  }
  v[pos] = nv;
  id[pos] = ni;
}

// key[c] = filtered activation of column j0 + c, for c < nc; returns the bit mask of the
// columns whose key beats root (NaN never does).
template <typename T, typename A, bool RELU, bool SCALE, bool THR>
inline uint32_t chunk_keys(const T* t, const A* b_enc, const A* scale, const A* thr, int64_t j0,
                           int64_t nc, A root, A* key) {
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  uint32_t mask = 0;
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t j = j0 + c;
    A v = static_cast<A>(Scalar<T>::load(t + j)) + b_enc[j];
    if (SCALE) v *= scale[j];
    if (RELU) v = v < A(0) ? A(0) : v;  // keeps NaN as NaN, like torch.relu
    if (THR) v = v > thr[j] ? v : kNegInf;
    key[c] = v;
    mask |= static_cast<uint32_t>(v > root) << c;
  }
  return mask;
}

#if defined(__AVX512F__)
// The same for a full chunk of 16 float32/bfloat16/float16 columns with float accumulation,
// in one AVX-512 block (GCC unrolls the scalar version instead of vectorising it).
template <typename T, bool RELU, bool SCALE, bool THR>
inline uint32_t chunk_keys16(const T* t, const float* b_enc, const float* scale, const float* thr,
                             int64_t j, float root, float* key) {
  __m512 v;
  if constexpr (std::is_same_v<T, float>) {
    v = _mm512_loadu_ps(t + j);
  } else if constexpr (std::is_same_v<T, bf16_t>) {  // the high half of a float32
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + j));
    v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {  // f16: exact widening (vcvtph2ps, AVX-512F)
    v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + j)));
  }
  v = _mm512_add_ps(v, _mm512_loadu_ps(b_enc + j));
  if (SCALE) v = _mm512_mul_ps(v, _mm512_loadu_ps(scale + j));
  if (RELU) {  // v < 0 -> 0; NaN compares false and stays NaN
    const __m512 zero = _mm512_setzero_ps();
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
  }
  if (THR) {
    const __mmask16 keep = _mm512_cmp_ps_mask(v, _mm512_loadu_ps(thr + j), _CMP_GT_OQ);
    v = _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), keep, v);
  }
  _mm512_storeu_ps(key, v);
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(root), _CMP_GT_OQ);
}
#elif defined(__AVX2__) && defined(__F16C__)
// The same with AVX2 (+F16C): two blocks of 8 columns, identical semantics (NaN is never
// clamped by ReLU, never passes a threshold, never beats the root).
template <typename T, bool RELU, bool SCALE, bool THR>
inline __m256 keys8(const T* t, const float* b_enc, const float* scale, const float* thr,
                    int64_t j) {
  __m256 v;
  if constexpr (std::is_same_v<T, float>) {
    v = _mm256_loadu_ps(t + j);
  } else if constexpr (std::is_same_v<T, bf16_t>) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + j));
    v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + j)));
  }
  v = _mm256_add_ps(v, _mm256_loadu_ps(b_enc + j));
  if (SCALE) v = _mm256_mul_ps(v, _mm256_loadu_ps(scale + j));
  if (RELU) {
    const __m256 zero = _mm256_setzero_ps();
    v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
  }
  if (THR) {
    const __m256 keep = _mm256_cmp_ps(v, _mm256_loadu_ps(thr + j), _CMP_GT_OQ);
    v = _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), v, keep);
  }
  return v;
}

template <typename T, bool RELU, bool SCALE, bool THR>
inline uint32_t chunk_keys16(const T* t, const float* b_enc, const float* scale, const float* thr,
                             int64_t j, float root, float* key) {
  const __m256 lo = keys8<T, RELU, SCALE, THR>(t, b_enc, scale, thr, j);
  const __m256 hi = keys8<T, RELU, SCALE, THR>(t, b_enc, scale, thr, j + 8);
  _mm256_storeu_ps(key, lo);
  _mm256_storeu_ps(key + 8, hi);
  const __m256 r = _mm256_set1_ps(root);
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(lo, r, _CMP_GT_OQ))) |
         (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(hi, r, _CMP_GT_OQ))) << 8);
}
#endif

// Running row as an in-place heap of (value, index) pairs: the general path (float64).
template <typename A>
struct PairHeap {
  A* v;
  int32_t* i;
  int64_t k;
  void begin(A* hv, int32_t* hi, int64_t kk) { v = hv; i = hi; k = kk; }
  A root() const { return v[0]; }
  void replace_root(A nv, int32_t ni) { heap_replace_root(v, i, k, nv, ni); }
  void end() {}
};

// float32 rows: value and index packed into one uint64 whose integer order is the "better"
// order (higher value, then lower index), so a heap level costs one compare. Loaded lazily
// at a row's first insert in a tile, written back at the end.
inline uint64_t pack(float v, int32_t i) {
  v += 0.0f;  // -0 -> +0: equal floats must pack equal
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(u) << 32) | static_cast<uint32_t>(INT64_C(0x7fffffff) - i);
}
inline void unpack(uint64_t key, float* v, int32_t* i) {
  uint32_t u = static_cast<uint32_t>(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
  std::memcpy(v, &u, 4);
  *i = static_cast<int32_t>(INT64_C(0x7fffffff) - static_cast<int64_t>(key & 0xffffffffu));
}

struct PackedHeap {
  std::vector<uint64_t> h;
  float* v = nullptr;
  int32_t* i = nullptr;
  int64_t k = 0;
  float rootv = 0;
  bool loaded = false;
  void begin(float* hv, int32_t* hi, int64_t kk) {
    v = hv; i = hi; k = kk; rootv = hv[0]; loaded = false;
  }
  float root() const { return rootv; }
  void replace_root(float nv, int32_t ni) {
    if (!loaded) {
      h.resize(static_cast<size_t>(k));
      for (int64_t j = 0; j < k; ++j) h[j] = pack(v[j], i[j]);
      loaded = true;
    }
    const uint64_t nk = pack(nv, ni);
    uint64_t* hp = h.data();
    int64_t pos = 0;
    for (;;) {
      int64_t c = 2 * pos + 1;
      if (c >= k) break;
      if (c + 1 < k && hp[c + 1] < hp[c]) ++c;
      if (hp[c] >= nk) break;
      hp[pos] = hp[c];
      pos = c;
    }
    hp[pos] = nk;
    int32_t dummy;
    unpack(hp[0], &rootv, &dummy);
  }
  void end() {
    if (loaded)
      for (int64_t j = 0; j < k; ++j) unpack(h[j], v + j, i + j);
  }
};

template <typename T, typename A, bool RELU, bool SCALE, bool THR>
void merge_rows(const T* tile, int64_t rows, int64_t cols, int64_t ld, int64_t row0, int64_t m0,
                const A* b_enc, const A* scale, const A* thr, int64_t k, A* run_vals,
                int32_t* run_idx) {
  using Heap = std::conditional_t<std::is_same_v<A, float>, PackedHeap, PairHeap<A>>;
#pragma omp parallel if (rows * cols >= (1 << 16))
  {
    Heap heap;
    alignas(64) A key[kChunk];
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* t = tile + r * ld;
      heap.begin(run_vals + (row0 + r) * k, run_idx + (row0 + r) * k, k);
      for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
        const int64_t nc = std::min(kChunk, cols - c0);
        const A root = heap.root();
        uint32_t mask;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__F16C__))
        constexpr bool kSimd = std::is_same_v<A, float> &&
                               (std::is_same_v<T, float> || std::is_same_v<T, bf16_t> ||
                                std::is_same_v<T, f16_t>);
        if constexpr (kSimd) {
          mask = nc == kChunk
                     ? chunk_keys16<T, RELU, SCALE, THR>(t, b_enc, scale, thr, c0, root, key)
                     : chunk_keys<T, A, RELU, SCALE, THR>(t, b_enc, scale, thr, c0, nc, root, key);
        } else
#endif
        {
          mask = chunk_keys<T, A, RELU, SCALE, THR>(t, b_enc, scale, thr, c0, nc, root, key);
        }
        while (mask) {  // only the columns that beat the k-th at the chunk start
          const int c = __builtin_ctz(mask);
          mask &= mask - 1;
          if (key[c] > heap.root()) heap.replace_root(key[c], static_cast<int32_t>(m0 + c0 + c));
        }
      }
      heap.end();
    }
  }
}

template <typename T, typename A>
void merge_dispatch(const T* tile, int64_t rows, int64_t cols, int64_t ld, int64_t row0,
                    int64_t m0, const A* b, const A* s, const A* th, bool relu, int64_t k,
                    A* rv, int32_t* ri) {
  // 8 specialisations so the inner loop carries no run-time option branches.
  const int code = (relu ? 4 : 0) | (s ? 2 : 0) | (th ? 1 : 0);
  switch (code) {
#define ACTSPACE_MERGE_CASE(c, R, S, H) \
  case c: merge_rows<T, A, R, S, H>(tile, rows, cols, ld, row0, m0, b, s, th, k, rv, ri); break;
    ACTSPACE_MERGE_CASE(0, false, false, false)
    ACTSPACE_MERGE_CASE(1, false, false, true)
    ACTSPACE_MERGE_CASE(2, false, true, false)
    ACTSPACE_MERGE_CASE(3, false, true, true)
    ACTSPACE_MERGE_CASE(4, true, false, false)
    ACTSPACE_MERGE_CASE(5, true, false, true)
    ACTSPACE_MERGE_CASE(6, true, true, false)
    ACTSPACE_MERGE_CASE(7, true, true, true)
#undef ACTSPACE_MERGE_CASE
  }
}

template <typename A, typename O>
void finish_rows(const A* rv, const int32_t* ri, int64_t n, int64_t k, O* ov, int32_t* oi) {
#pragma omp parallel
  {
    std::vector<std::pair<A, int32_t>> buf(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      int64_t f = 0;
      for (int64_t j = 0; j < k; ++j)
        if (ri[r * k + j] >= 0) buf[f++] = {rv[r * k + j], ri[r * k + j]};
      std::sort(buf.begin(), buf.begin() + f, [](const auto& a, const auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      });
      for (int64_t j = 0; j < k; ++j) {
        const bool filled = j < f;
        Scalar<O>::store(ov + r * k + j, filled ? static_cast<typename Scalar<O>::acc>(buf[j].first)
                                                : typename Scalar<O>::acc(0));
        oi[r * k + j] = filled ? buf[j].second : -1;
      }
    }
  }
}

}  // namespace

void topk_encode_merge(const void* tile, int tile_dtype, int64_t rows, int64_t cols, int64_t ld,
                       int64_t row0, int64_t m0, const void* b_enc, const void* scale,
                       const void* threshold, int acc_dtype, bool relu, int64_t k,
                       void* run_vals, int32_t* run_idx) {
  if (rows < 0 || cols < 0 || ld < cols || k < 1 || m0 + cols > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("topk_encode_merge: bad sizes");
  if (!b_enc) throw std::invalid_argument("topk_encode_merge: b_enc is required (pass zeros)");
  dispatch_acc(acc_dtype, "topk_encode: accumulation", [&](auto acc_tag) {
    using A = decltype(acc_tag);
    dispatch_float(tile_dtype, "topk_encode_merge tile", [&](auto tile_tag) {
      using T = decltype(tile_tag);
      merge_dispatch<T, A>(reinterpret_cast<const T*>(tile), rows, cols, ld, row0, m0,
                           reinterpret_cast<const A*>(b_enc), reinterpret_cast<const A*>(scale),
                           reinterpret_cast<const A*>(threshold), relu, k,
                           reinterpret_cast<A*>(run_vals), reinterpret_cast<int32_t*>(run_idx));
    });
  });
}

void topk_encode_finish(const void* run_vals, const int32_t* run_idx, int acc_dtype, int64_t n,
                        int64_t k, void* out_vals, int out_dtype, int32_t* out_idx) {
  if (n < 0 || k < 1) throw std::invalid_argument("topk_encode_finish: bad sizes");
  dispatch_acc(acc_dtype, "topk_encode: accumulation", [&](auto acc_tag) {
    using A = decltype(acc_tag);
    dispatch_float(out_dtype, "topk_encode_finish values", [&](auto out_tag) {
      using O = decltype(out_tag);
      finish_rows<A, O>(reinterpret_cast<const A*>(run_vals),
                        reinterpret_cast<const int32_t*>(run_idx), n, k,
                        reinterpret_cast<O*>(out_vals), reinterpret_cast<int32_t*>(out_idx));
    });
  });
}

}  // namespace ACTSPACE_ISA
}  // namespace actspace
