// stats: pybind11 entry points (raw pointers in, nothing allocated here).
// A moment state crosses as a tuple of ten data pointers in MOMENT_FIELDS order:
// count, mean, m2, m3, m4, min, max, absmax (float64 [d]), zeros, nonfinite (int64 [d]).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "common/bind.h"
#include "common/isa.h"
#include "stats/stats.h"

namespace py = pybind11;
using namespace actspace;

static MomentState moment_state(const std::vector<uintptr_t>& p) {
  if (p.size() != 10) throw std::invalid_argument("moment state: expected 10 field pointers");
  for (uintptr_t q : p)
    if (q == 0) throw std::invalid_argument("moment state: null field pointer");
  auto d = [&](int i) { return reinterpret_cast<double*>(p[i]); };
  auto l = [&](int i) { return reinterpret_cast<int64_t*>(p[i]); };
  return MomentState{d(0), d(1), d(2), d(3), d(4), d(5), d(6), d(7), l(8), l(9)};
}

static void check_latent(int64_t N, int64_t k, int64_t M, int64_t T, int64_t nbins, double lo,
                         double hi) {
  if (N < 0 || k < 0 || M <= 0 || T < 0 || nbins <= 0 || !(hi > lo))
    throw std::invalid_argument("latent_update: bad sizes or histogram range");
}

#ifndef ACTSPACE_CUDA_EMULATE
void bind_stats(py::module_& m) {
  m.def(
      "stats_moments_update",
      [](uintptr_t x, int dtype, int64_t N, int64_t d, int64_t ld, std::vector<uintptr_t> st) {
        if (N < 0 || d < 0 || ld < d) throw std::invalid_argument("moments_update: bad sizes");
        const MomentState s = moment_state(st);
        py::gil_scoped_release nogil;
        ACTSPACE_CALL_ISA(moments_update)(reinterpret_cast<const void*>(x), dtype, N, d, ld, s);
      },
      py::arg("x"), py::arg("dtype"), py::arg("N"), py::arg("d"), py::arg("ld"), py::arg("state"));
  m.def(
      "stats_latent_update",
      [](uintptr_t values, int vdtype, int64_t vld, uintptr_t indices, int idtype, int64_t ild,
         int64_t N, int64_t k, int64_t M, int64_t T, int64_t nbins, double lo, double hi,
         int64_t token_offset, uintptr_t count, uintptr_t sum, uintptr_t sumsq, uintptr_t hist,
         uintptr_t top_values, uintptr_t top_tokens, uintptr_t ws) {
        check_latent(N, k, M, T, nbins, lo, hi);
        py::gil_scoped_release nogil;
        return ACTSPACE_CALL_ISA(latent_update)(
            reinterpret_cast<const void*>(values), vdtype, vld,
            reinterpret_cast<const void*>(indices), idtype, ild, N, k, M, T, nbins, lo, hi,
            token_offset, reinterpret_cast<int64_t*>(count), reinterpret_cast<double*>(sum),
            reinterpret_cast<double*>(sumsq), reinterpret_cast<int64_t*>(hist),
            reinterpret_cast<float*>(top_values), reinterpret_cast<int64_t*>(top_tokens),
            reinterpret_cast<int64_t*>(ws));
      });
}
#endif

#ifdef ACTSPACE_WITH_CUDA
void bind_stats_cuda(py::module_& m) {
  m.def("stats_moments_cuda_chunks", [](int64_t N) { return cuda::moments_cuda_chunks(N); });
  m.def("stats_moments_update_cuda",
        [](uintptr_t x, int dtype, int64_t N, int64_t d, int64_t ld, std::vector<uintptr_t> st,
           uintptr_t part_f, uintptr_t part_i, uintptr_t stream) {
          if (N < 0 || d < 0 || ld < d) throw std::invalid_argument("moments_update: bad sizes");
          cuda::moments_update_cuda(reinterpret_cast<const void*>(x), dtype, N, d, ld, moment_state(st),
                              reinterpret_cast<double*>(part_f),
                              reinterpret_cast<int64_t*>(part_i), bind::stream(stream));
        });
  m.def("stats_latent_update_cuda",
        [](uintptr_t values, int vdtype, int64_t vld, int64_t N, int64_t k, int64_t M, int64_t T,
           int64_t nbins, double lo, double hi, int64_t token_offset, uintptr_t count,
           uintptr_t sum, uintptr_t sumsq, uintptr_t hist, uintptr_t top_values,
           uintptr_t top_tokens, uintptr_t ws, uintptr_t stream) {
          check_latent(N, k, M, T, nbins, lo, hi);
          cuda::latent_update_cuda(
              reinterpret_cast<const void*>(values), vdtype, vld, N, k, M, T, nbins, lo, hi,
              token_offset, reinterpret_cast<int64_t*>(count), reinterpret_cast<double*>(sum),
              reinterpret_cast<double*>(sumsq), reinterpret_cast<int64_t*>(hist),
              reinterpret_cast<float*>(top_values), reinterpret_cast<int64_t*>(top_tokens),
              reinterpret_cast<const int64_t*>(ws), bind::stream(stream));
        });
}
#endif
