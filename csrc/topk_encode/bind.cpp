// topk_encode: pybind11 entry points (raw pointers in, nothing allocated here).
// The GIL is released around the kernels: they touch no Python object.
#include <pybind11/pybind11.h>

#include "common/isa.h"
#include "topk_encode/topk_encode.h"

namespace py = pybind11;
using namespace actspace;

void bind_topk_encode(py::module_& m) {
  m.def(
      "topk_encode_merge",
      [](uintptr_t tile, int tile_dtype, int64_t rows, int64_t cols, int64_t ld, int64_t row0,
         int64_t m0, uintptr_t b_enc, uintptr_t scale, uintptr_t threshold, int acc_dtype,
         bool relu, int64_t k, uintptr_t run_vals, uintptr_t run_idx) {
        py::gil_scoped_release nogil;
        ACTSPACE_CALL_ISA(topk_encode_merge)(tile, tile_dtype, rows, cols, ld, row0, m0, b_enc,
                                             scale, threshold, acc_dtype, relu, k, run_vals,
                                             run_idx);
      },
      "Merge a pre-activation tile into the running per-row top-k (CPU).");
  m.def(
      "topk_encode_finish",
      [](uintptr_t run_vals, uintptr_t run_idx, int acc_dtype, int64_t n, int64_t k,
         uintptr_t out_vals, int out_dtype, uintptr_t out_idx) {
        py::gil_scoped_release nogil;
        ACTSPACE_CALL_ISA(topk_encode_finish)(run_vals, run_idx, acc_dtype, n, k, out_vals,
                                              out_dtype, out_idx);
      },
      "Sort the running top-k rows best first and write the outputs (CPU).");
#ifdef ACTSPACE_WITH_CUDA
  m.def(
      "topk_encode_merge_cuda",
      [](uintptr_t tile, int tile_dtype, int64_t rows, int64_t cols, int64_t ld, int64_t row0,
         int64_t m0, uintptr_t b_enc, uintptr_t scale, uintptr_t threshold, int acc_dtype,
         bool relu, int64_t k, uintptr_t run_vals, uintptr_t run_idx, uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::topk_encode_merge(tile, tile_dtype, rows, cols, ld, row0, m0, b_enc, scale,
                                threshold, acc_dtype, relu, k, run_vals, run_idx, stream);
      },
      "Merge a device pre-activation tile into the running top-k on `stream` (CUDA).");
  m.def(
      "topk_encode_finish_cuda",
      [](uintptr_t run_vals, uintptr_t run_idx, int acc_dtype, int64_t n, int64_t k,
         uintptr_t out_vals, int out_dtype, uintptr_t out_idx, uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::topk_encode_finish(run_vals, run_idx, acc_dtype, n, k, out_vals, out_dtype,
                                 out_idx, stream);
      },
      "Write the running top-k rows as outputs on `stream` (CUDA).");
#endif
}
