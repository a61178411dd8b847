// stats: streaming per-channel moments and per-latent statistics of sparse codes.
// Entry points are declared once per ISA namespace (see common/isa.h); the small
// formulas both the CPU and the CUDA kernels need (shifted sums -> central moments,
// Chan's pairwise merge) live here once, with internal linkage so that the copies
// compiled with different ISA flags never get mixed up by the linker.
#pragma once
#include <cstdint>

#include "common/dtype.h"

#if defined(__CUDACC__)
#define ACTSPACE_STATS_HD static __host__ __device__ __forceinline__
#else
#define ACTSPACE_STATS_HD static inline
#endif

namespace actspace {

// Pointers to the ten fields of a moment state (actspace.reference.stats.moments_init),
// each contiguous [d]: float64 count/mean/m2/m3/m4/min/max/absmax, int64 zeros/nonfinite.
struct MomentState {
  double *count, *mean, *m2, *m3, *m4, *min, *max, *absmax;
  int64_t *zeros, *nonfinite;
};

// Sums of the deviations from a shift c, S_p = sum (x - c)^p over n values, turned into
// the mean and the central sums M2..M4. With c close to the mean (the chunk mean) S1 is
// tiny, so the corrections below are small and cancellation-free.
ACTSPACE_STATS_HD void shifted_to_central(double n, double c, double s1, double s2, double s3,
                                          double s4, double& mean, double& m2, double& m3,
                                          double& m4) {
  if (n <= 0) { mean = m2 = m3 = m4 = 0; return; }
  const double d = s1 / n, d2 = d * d;
  mean = c + d;
  m2 = s2 - d * s1;
  m3 = s3 - 3 * d * s2 + 2 * n * d2 * d;
  m4 = s4 - 4 * d * s3 + 6 * d2 * s2 - 3 * n * d2 * d2;
}

// Chan et al. / Pebay pairwise merge of (nb, mb, b2, b3, b4) into (na, ma, a2, a3, a4);
// the same formulas as reference.stats.moments_merge.
ACTSPACE_STATS_HD void chan_merge(double& na, double& ma, double& a2, double& a3, double& a4,
                                  double nb, double mb, double b2, double b3, double b4) {
  if (nb <= 0) return;
  if (na <= 0) { na = nb; ma = mb; a2 = b2; a3 = b3; a4 = b4; return; }
  const double n = na + nb, delta = mb - ma, d2 = delta * delta;
  const double m4 = a4 + b4 + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n) +
                    6 * d2 * (na * na * b2 + nb * nb * a2) / (n * n) +
                    4 * delta * (na * b3 - nb * a3) / n;
  const double m3 = a3 + b3 + d2 * delta * na * nb * (na - nb) / (n * n) +
                    3 * delta * (na * b2 - nb * a2) / n;
  const double m2 = a2 + b2 + d2 * na * nb / n;
  ma = ma + delta * nb / n;
  a2 = m2; a3 = m3; a4 = m4; na = n;
}

// Histogram bin of a positive value: log10 range [lo, hi) in nbins, clamped to the end bins.
ACTSPACE_STATS_HD int64_t latent_bin(double log10v, double lo, double hi, int64_t nbins) {
  double b = (log10v - lo) / (hi - lo) * static_cast<double>(nbins);
  b = b < 0 ? 0 : b;  // also catches -inf
  const double top = static_cast<double>(nbins - 1);
  b = b > top ? top : b;
  return static_cast<int64_t>(b);  // floor: b >= 0 here
}

// v * v rounded on its own, never fused into the add that follows (a compiler may contract
// ss += v * v into one FMA, and only where the target has FMA: the per-ISA CPU copies, nvcc):
// the CPU and CUDA latent folds add the same products and stay bitwise equal.
ACTSPACE_STATS_HD double square_rn(double v) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(v, v);
#else
  double sq = v * v;
#if defined(__x86_64__)
  __asm__("" : "+x"(sq));  // opaque to the optimiser: the product is rounded here
#elif defined(__aarch64__)
  __asm__("" : "+w"(sq));
#else
  volatile double keep = sq;
  sq = keep;
#endif
  return sq;
#endif
}

// (v, tok) ranks before (ov, ot) in a top-T list: larger value first, ties to the earlier token.
ACTSPACE_STATS_HD bool top_before(double v, int64_t tok, double ov, int64_t ot) {
  return v > ov || (v == ov && tok < ot);
}

}  // namespace actspace

// CPU entry points. moments: x [N, d] with row stride ld (channels contiguous).
// latent: values/indices [N, k] with row strides; ws int64 [M + 1 + N*k] scratch.
// latent_update returns the number of entries whose index was >= M (skipped; the ops
// layer validates first, so this is a backstop).
#define ACTSPACE_DECLARE_STATS(ns)                                                           \
  namespace ns {                                                                             \
  void moments_update(const void* x, int dtype, int64_t N, int64_t d, int64_t ld,           \
                      const MomentState& st);                                                \
  int64_t latent_update(const void* values, int vdtype, int64_t vld, const void* indices,    \
                        int idtype, int64_t ild, int64_t N, int64_t k, int64_t M, int64_t T, \
                        int64_t nbins, double lo, double hi, int64_t token_offset,           \
                        int64_t* count, double* sum, double* sumsq, int64_t* hist,           \
                        float* top_values, int64_t* top_tokens, int64_t* ws);                \
  }

namespace actspace {
ACTSPACE_DECLARE_STATS(generic)
ACTSPACE_DECLARE_STATS(avx2)
ACTSPACE_DECLARE_STATS(avx512)

#if defined(ACTSPACE_WITH_CUDA)
// CUDA entry points (csrc/stats/cuda.cu); pointers are device pointers, `stream` a
// cudaStream_t; nothing synchronises.
namespace cuda {
// moments: part double [n_chunks(N) * 8 * d] + int64 [n_chunks(N) * 2 * d] workspace.
int64_t moments_cuda_chunks(int64_t N);
void moments_update_cuda(const void* x, int dtype, int64_t N, int64_t d, int64_t ld,
                         const MomentState& st, double* part_f, int64_t* part_i, void* stream);
// latent: ws int64 [(M + 1) + N*k], filled by the caller: the CSR of the firing slots
// (index >= 0, value > 0) by latent, offsets then entries n*k + j in slot order.
void latent_update_cuda(const void* values, int vdtype, int64_t vld, int64_t N, int64_t k,
                        int64_t M, int64_t T, int64_t nbins, double lo, double hi,
                        int64_t token_offset, int64_t* count, double* sum, double* sumsq,
                        int64_t* hist, float* top_values, int64_t* top_tokens,
                        const int64_t* ws, void* stream);
}  // namespace cuda
#endif
}  // namespace actspace
