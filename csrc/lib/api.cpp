// The embeddable C++ API (csrc/include/actspace/*.hpp) over the per-ISA CPU kernels.
//
// The Python layer drives the kernels with torch tensors (ops/*.py); this file is the same
// driving in plain C++ for frameworks that embed the kernels without Python or libtorch:
// it owns the small buffers, checks sizes, and for topk_encode makes the pre-activation
// tiles itself with lib/tile_gemm.cpp (the Python path uses torch's matmul for that).
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "actspace/actspace.hpp"
#include "common/isa.h"
#include "lib/tile_gemm.h"
#include "sparse_decode/sparse_decode.h"
#include "stats/stats.h"
#include "topk_encode/topk_encode.h"

namespace actspace {
namespace {

// Tile shape: rows x cols float32 = 4 MB, small enough to stay in cache between the GEMM
// that writes it and the merge that reads it.
constexpr int64_t kTileRows = 256;
constexpr int64_t kTileCols = 4096;

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

void topk_encode(const float* x, const float* W_enc, const float* b_enc, const float* b_dec,
                 int64_t n, int64_t d, int64_t m, int64_t k, float* out_values,
                 int32_t* out_indices, bool relu, const float* scale, const float* threshold) {
  require(n >= 0 && d >= 1 && m >= 1, "actspace::topk_encode: need n >= 0, d >= 1, m >= 1");
  require(k >= 1, "actspace::topk_encode: k must be >= 1");
  require(m <= std::numeric_limits<int32_t>::max(), "actspace::topk_encode: m must be < 2^31");
  require(x && W_enc && out_values && out_indices,
          "actspace::topk_encode: x, W_enc, out_values and out_indices are required");
  if (n == 0) return;
  const std::vector<float> zeros(b_enc ? 0 : static_cast<size_t>(m), 0.0f);
  const float* bias = b_enc ? b_enc : zeros.data();  // the merge kernel needs a bias

  // Running top-k per row: value -inf, index -1 (the merge kernel's empty heap).
  std::vector<float> run_vals(static_cast<size_t>(n * k), -std::numeric_limits<float>::infinity());
  std::vector<int32_t> run_idx(static_cast<size_t>(n * k), -1);
  const int64_t rows_max = std::min(n, kTileRows), cols_max = std::min(m, kTileCols);
  std::vector<float> tile(static_cast<size_t>(rows_max * cols_max));
  std::vector<float> xc(b_dec ? static_cast<size_t>(rows_max * d) : 0);
  static const auto merge = ACTSPACE_CALL_ISA(topk_encode_merge);
  static const auto gemm = ACTSPACE_CALL_ISA(tile_gemm_f32);

  for (int64_t r0 = 0; r0 < n; r0 += rows_max) {
    const int64_t rows = std::min(rows_max, n - r0);
    const float* xr = x + r0 * d;
    if (b_dec) {  // x - b_dec for this row block, once for every latent tile
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < d; ++i) xc[r * d + i] = xr[r * d + i] - b_dec[i];
      xr = xc.data();
    }
    for (int64_t m0 = 0; m0 < m; m0 += cols_max) {
      const int64_t cols = std::min(cols_max, m - m0);
      gemm(xr, rows, W_enc + m0 * d, cols, d, tile.data(), cols);
      merge(tile.data(), kF32, rows, cols, cols, r0, m0, bias + m0, scale ? scale + m0 : nullptr,
            threshold ? threshold + m0 : nullptr, kF32, relu, k, run_vals.data(), run_idx.data());
    }
  }
  static const auto finish = ACTSPACE_CALL_ISA(topk_encode_finish);
  finish(run_vals.data(), run_idx.data(), kF32, n, k, out_values, kF32, out_indices);
}

void sparse_decode(const float* values, const int32_t* indices, const float* W_dec,
                   const float* b_dec, int64_t n, int64_t k, int64_t m, int64_t d, float* out) {
  require(n >= 0 && k >= 1 && m >= 1 && d >= 1,
          "actspace::sparse_decode: need n >= 0, k >= 1, m >= 1, d >= 1");
  require(values && indices && W_dec && out,
          "actspace::sparse_decode: values, indices, W_dec and out are required");
  static const auto forward = ACTSPACE_CALL_ISA(sparse_decode_forward);
  const int64_t bad = forward(values, indices, kI32, W_dec, d, kF32, b_dec, out, n, k, m, d);
  if (bad)
    throw std::invalid_argument("actspace::sparse_decode: " + std::to_string(bad) +
                                " indices outside [-1, m)");
}

void moments_init(const ChannelMoments& st, int64_t d) {
  for (int64_t c = 0; c < d; ++c) {
    st.count[c] = st.mean[c] = st.m2[c] = st.m3[c] = st.m4[c] = st.absmax[c] = 0;
    st.min[c] = std::numeric_limits<double>::infinity();
    st.max[c] = -std::numeric_limits<double>::infinity();
    st.zeros[c] = st.nonfinite[c] = 0;
  }
}

void moments_update(const float* x, int64_t n, int64_t d, int64_t ld, const ChannelMoments& st) {
  require(n >= 0 && d >= 1 && ld >= d, "actspace::moments_update: need n >= 0, d >= 1, ld >= d");
  require(x != nullptr || n == 0, "actspace::moments_update: x is required");
  const MomentState s{st.count, st.mean, st.m2,     st.m3,    st.m4,
                      st.min,   st.max,  st.absmax, st.zeros, st.nonfinite};
  static const auto update = ACTSPACE_CALL_ISA(moments_update);
  update(x, kF32, n, d, ld, s);
}

}  // namespace actspace
