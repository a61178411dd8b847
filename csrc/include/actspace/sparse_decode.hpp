// actspace C++ API: the sparse decoder on raw float32 pointers (CPU).
#pragma once
#include <cstdint>

namespace actspace {

// out[r] = sum_j values[r, j] * W_dec[indices[r, j]] (+ b_dec), r < n.
//   values [n, k] float32, indices [n, k] int32 (-1 = empty slot, skipped),
//   W_dec [m, d] row-major float32, b_dec [d] or nullptr, out [n, d] float32.
// Throws std::invalid_argument when an index is outside [-1, m).
void sparse_decode(const float* values, const int32_t* indices, const float* W_dec,
                   const float* b_dec, int64_t n, int64_t k, int64_t m, int64_t d, float* out);

}  // namespace actspace
