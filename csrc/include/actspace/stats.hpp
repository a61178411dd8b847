// actspace C++ API: streaming per-channel moments (CPU).
#pragma once
#include <cstdint>

namespace actspace {

// Running moments of d channels, each field an array [d] owned by the caller. Start from
// moments_init; feed any number of [n, d] blocks; the result does not depend on how the
// rows were split into blocks beyond float64 rounding (Chan's pairwise merge).
struct ChannelMoments {
  double *count, *mean, *m2, *m3, *m4;  // m_p: sums of the p-th central powers
  double *min, *max, *absmax;
  int64_t *zeros, *nonfinite;           // exact zeros; NaN/inf (left out of the moments)
};

// count/mean/m2..m4/absmax/zeros/nonfinite = 0, min = +inf, max = -inf.
void moments_init(const ChannelMoments& st, int64_t d);

// Fold x [n, d] (float32, rows `ld` elements apart, ld >= d) into st.
// Variance = m2 / count (population) or m2 / (count - 1).
void moments_update(const float* x, int64_t n, int64_t d, int64_t ld, const ChannelMoments& st);

}  // namespace actspace
