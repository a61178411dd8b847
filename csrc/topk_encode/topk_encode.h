// topk_encode: kernel entry points, declared once per ISA namespace (see common/isa.h).
//
// The tier-0 design: Python produces the pre-activation one latent tile at a time with
// torch's matmul (tile [rows, cols] = x_centered[rows] @ W_enc[m0:m0+cols]ᵀ) and hands the
// tile to topk_encode_merge, which applies bias, scale, activation and the JumpReLU filter
// and merges the tile into a running top-k per row. topk_encode_finish sorts each row and
// writes the output. No N×M buffer ever exists.
//
// Running state (allocated and initialised by Python): run_vals [N, k] in the accumulation
// type (float32, or float64 for float64 input) filled with -inf, run_idx [N, k] int32 filled
// with -1. On CPU each row is a binary min-heap ordered by "worse" = (lower value, or equal
// value and higher index); on CUDA each row is a list sorted best first.
#pragma once
#include <cstdint>

#include "common/dtype.h"

// merge: tile [rows, ld] (dtype tile_dtype) holds the pre-activation of latents
// m0..m0+cols-1 for rows row0..row0+rows-1; b_enc/scale/threshold point at latent m0 (acc
// dtype; b_enc required, scale/threshold 0 = absent); run_vals/run_idx are the whole [N, k]
// running buffers. finish: out_vals [N, k] (out_dtype), out_idx [N, k] int32, sorted best
// first; unfilled slots get value 0, index -1.
#define ACTSPACE_DECLARE_TOPK_ENCODE(ns)                                                     \
  namespace ns {                                                                             \
  void topk_encode_merge(const void* tile, int tile_dtype, int64_t rows, int64_t cols,       \
                         int64_t ld, int64_t row0, int64_t m0, const void* b_enc,            \
                         const void* scale, const void* threshold, int acc_dtype, bool relu, \
                         int64_t k, void* run_vals, int32_t* run_idx);                       \
  void topk_encode_finish(const void* run_vals, const int32_t* run_idx, int acc_dtype,       \
                          int64_t n, int64_t k, void* out_vals, int out_dtype,              \
                          int32_t* out_idx);                                                 \
  }

namespace actspace {
ACTSPACE_DECLARE_TOPK_ENCODE(generic)
ACTSPACE_DECLARE_TOPK_ENCODE(avx2)
ACTSPACE_DECLARE_TOPK_ENCODE(avx512)

#ifdef ACTSPACE_WITH_CUDA
namespace cuda {
// Same contract as the CPU entry points, on device pointers, enqueued on `stream` (a
// cudaStream_t); never synchronises. Rows are lists sorted best first.
void topk_encode_merge(const void* tile, int tile_dtype, int64_t rows, int64_t cols, int64_t ld,
                       int64_t row0, int64_t m0, const void* b_enc, const void* scale,
                       const void* threshold, int acc_dtype, bool relu, int64_t k,
                       void* run_vals, int32_t* run_idx, void* stream);
void topk_encode_finish(const void* run_vals, const int32_t* run_idx, int acc_dtype, int64_t n,
                        int64_t k, void* out_vals, int out_dtype, int32_t* out_idx,
                        void* stream);
}  // namespace cuda
#endif
}  // namespace actspace
