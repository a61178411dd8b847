// topk_encode: pybind11 entry points (raw pointers in, nothing allocated here).
// The GIL is released around the kernels: they touch no Python object.
#include <pybind11/pybind11.h>

#include "common/bind.h"
#include "common/isa.h"
#include "topk_encode/topk_encode.h"

namespace py = pybind11;
using namespace actspace;
using namespace actspace::bind;

#ifndef ACTSPACE_CUDA_EMULATE
void bind_topk_encode(py::module_& m) {
  m.def(
      "topk_encode_merge",
      [](ptr_t tile, int tile_dtype, int64_t rows, int64_t cols, int64_t ld, int64_t row0,
         int64_t m0, ptr_t b_enc, ptr_t scale, ptr_t threshold, int acc_dtype, bool relu,
         int64_t k, ptr_t run_vals, ptr_t run_idx) {
        py::gil_scoped_release nogil;
        ACTSPACE_CALL_ISA(topk_encode_merge)(P<const void>(tile), tile_dtype, rows, cols, ld,
                                             row0, m0, P<const void>(b_enc), P<const void>(scale),
                                             P<const void>(threshold), acc_dtype, relu, k,
                                             P<void>(run_vals), P<int32_t>(run_idx));
      },
      "Merge a pre-activation tile into the running per-row top-k (CPU).");
  m.def(
      "topk_encode_finish",
      [](ptr_t run_vals, ptr_t run_idx, int acc_dtype, int64_t n, int64_t k, ptr_t out_vals,
         int out_dtype, ptr_t out_idx) {
        py::gil_scoped_release nogil;
        ACTSPACE_CALL_ISA(topk_encode_finish)(P<const void>(run_vals), P<const int32_t>(run_idx),
                                              acc_dtype, n, k, P<void>(out_vals), out_dtype,
                                              P<int32_t>(out_idx));
      },
      "Sort the running top-k rows best first and write the outputs (CPU).");
}
#endif

#ifdef ACTSPACE_WITH_CUDA
void bind_topk_encode_cuda(py::module_& m) {
  m.def(
      "topk_encode_merge_cuda",
      [](ptr_t tile, int tile_dtype, int64_t rows, int64_t cols, int64_t ld, int64_t row0,
         int64_t m0, ptr_t b_enc, ptr_t scale, ptr_t threshold, int acc_dtype, bool relu,
         int64_t k, ptr_t run_vals, ptr_t run_idx, ptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::topk_encode_merge(P<const void>(tile), tile_dtype, rows, cols, ld, row0, m0,
                                P<const void>(b_enc), P<const void>(scale),
                                P<const void>(threshold), acc_dtype, relu, k, P<void>(run_vals),
                                P<int32_t>(run_idx), bind::stream(stream));
      },
      "Merge a device pre-activation tile into the running top-k on `stream` (CUDA).");
  m.def(
      "topk_encode_finish_cuda",
      [](ptr_t run_vals, ptr_t run_idx, int acc_dtype, int64_t n, int64_t k, ptr_t out_vals,
         int out_dtype, ptr_t out_idx, ptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::topk_encode_finish(P<const void>(run_vals), P<const int32_t>(run_idx), acc_dtype,
                                 n, k, P<void>(out_vals), out_dtype, P<int32_t>(out_idx),
                                 bind::stream(stream));
      },
      "Write the running top-k rows as outputs on `stream` (CUDA).");
}
#endif
