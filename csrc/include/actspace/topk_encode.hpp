// actspace C++ API: the top-k sparse encoder on raw float32 pointers (CPU).
// No Python, no libtorch: link actspace::kernels (find_package(actspace)).
#pragma once
#include <cstdint>

namespace actspace {

// values, indices = TopK(act(((x - b_dec) @ W_encᵀ + b_enc) * scale), k), row by row.
//   x [n, d], W_enc [m, d], b_enc [m], b_dec [d], scale [m], threshold [m]: row-major,
//   contiguous float32; b_enc, b_dec, scale, threshold may be nullptr (absent).
//   relu: apply max(0, .) after the scale (else the identity).
//   threshold: JumpReLU filter, a latent is a candidate only when its activation > threshold.
//   out_values [n, k] float32, out_indices [n, k] int32: sorted descending, ties to the
//   lower latent index; rows with fewer than k candidates end in value 0, index -1.
// The pre-activation is made one latent tile at a time (a blocked, OpenMP-parallel float32
// GEMM) and merged into a running top-k: no n×m buffer. Uses the best CPU ISA copy
// (AVX-512 / AVX2 / generic; the environment variable ACTSPACE_ISA caps it).
// Throws std::invalid_argument on bad sizes (k < 1, m >= 2^31 ...).
void topk_encode(const float* x, const float* W_enc, const float* b_enc, const float* b_dec,
                 int64_t n, int64_t d, int64_t m, int64_t k, float* out_values,
                 int32_t* out_indices, bool relu = true, const float* scale = nullptr,
                 const float* threshold = nullptr);

}  // namespace actspace
