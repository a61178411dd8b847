// Register-blocked float32 dot-product GEMM for the C++ topk_encode driver; compiled per ISA
// into namespace actspace::ACTSPACE_ISA. Both operands are row-major over d, so each output
// is a dot product: a block of 2 rows x 4 latents keeps 8 vectors of partial sums (lane
// width L matches the ISA's register), each loaded x vector is used 4 times and each W
// vector twice. Partial sums are lane-wise, so the compiler vectorises without reassociating.
#include <algorithm>

#include "lib/tile_gemm.h"

namespace actspace {
namespace ACTSPACE_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int L = 16;
#else
constexpr int L = 8;
#endif

template <int R, int C>
inline void block(const float* x, const float* W, int64_t d, float* out, int64_t ld) {
  float acc[R][C][L] = {};
  int64_t i = 0;
  for (; i + L <= d; i += L)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c)
        for (int l = 0; l < L; ++l) acc[r][c][l] += x[r * d + i + l] * W[c * d + i + l];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = 0;
      for (int l = 0; l < L; ++l) s += acc[r][c][l];
      for (int64_t j = i; j < d; ++j) s += x[r * d + j] * W[c * d + j];
      out[r * ld + c] = s;
    }
}

}  // namespace

void tile_gemm_f32(const float* x, int64_t rows, const float* W, int64_t cols, int64_t d,
                   float* tile, int64_t ld) {
  const int64_t row_pairs = (rows + 1) / 2;
  // Latent blocks of 64 outer, row pairs inner: a 64 x d slab of W stays in L2 while every
  // row pair passes over it.
#pragma omp parallel for schedule(dynamic, 1) if (rows * cols * d >= (1 << 18))
  for (int64_t c0 = 0; c0 < cols; c0 += 64) {
    const int64_t c1 = std::min(cols, c0 + 64);
    for (int64_t p = 0; p < row_pairs; ++p) {
      const int64_t r = 2 * p;
      const float* xr = x + r * d;
      float* out = tile + r * ld;
      int64_t c = c0;
      if (r + 1 < rows) {
        for (; c + 4 <= c1; c += 4) block<2, 4>(xr, W + c * d, d, out + c, ld);
        for (; c < c1; ++c) block<2, 1>(xr, W + c * d, d, out + c, ld);
      } else {
        for (; c + 4 <= c1; c += 4) block<1, 4>(xr, W + c * d, d, out + c, ld);
        for (; c < c1; ++c) block<1, 1>(xr, W + c * d, d, out + c, ld);
      }
    }
  }
}

}  // namespace ACTSPACE_ISA
}  // namespace actspace
