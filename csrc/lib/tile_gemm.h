// The float32 tile GEMM of the C++ topk_encode driver (csrc/lib/api.cpp), compiled once per
// ISA like the kernels (csrc/lib/library.cmake) and picked with ACTSPACE_CALL_ISA.
#pragma once
#include <cstdint>

// tile[r * ld + c] = <x[r], W[c]> for r < rows, c < cols; x [rows, d], W [cols, d] row-major.
#define ACTSPACE_DECLARE_TILE_GEMM(ns)                                                 \
  namespace ns {                                                                       \
  void tile_gemm_f32(const float* x, int64_t rows, const float* W, int64_t cols,       \
                     int64_t d, float* tile, int64_t ld);                              \
  }

namespace actspace {
ACTSPACE_DECLARE_TILE_GEMM(generic)
ACTSPACE_DECLARE_TILE_GEMM(avx2)
ACTSPACE_DECLARE_TILE_GEMM(avx512)
}  // namespace actspace
