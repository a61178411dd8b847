// sparse_decode: pybind11 entry points (raw pointers in, nothing allocated here).
// CPU entry points pick the best ISA copy; *_cuda ones exist when built with CUDA.
// A bad index that slipped past Python's validation raises ValueError (the backstop).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "common/bind.h"
#include "common/isa.h"
#include "sparse_decode/sparse_decode.h"

namespace py = pybind11;
using namespace actspace;
using namespace actspace::bind;

#ifndef ACTSPACE_CUDA_EMULATE
namespace {
void check_bad(int64_t bad, int64_t M) {
  if (bad > 0)
    throw std::invalid_argument("sparse_decode: " + std::to_string(bad) +
                                " indices outside [-1, M) with M = " + std::to_string(M));
}
}  // namespace

void bind_sparse_decode(py::module_& m) {
  m.def("sparse_decode_forward",
        [](ptr_t values, ptr_t indices, int idx_code, ptr_t W, int64_t ldw, int w_code,
           ptr_t bias, ptr_t out, int64_t N, int64_t k, int64_t M, int64_t d) {
          int64_t bad;
          {
            py::gil_scoped_release nogil;
            bad = ACTSPACE_CALL_ISA(sparse_decode_forward)(
                P<const void>(values), P<const void>(indices), idx_code, P<const void>(W), ldw,
                w_code, P<const void>(bias), P<void>(out), N, k, M, d);
          }
          check_bad(bad, M);
        });
  m.def("sparse_decode_grad_values",
        [](ptr_t grad_out, ptr_t indices, int idx_code, ptr_t W, int64_t ldw, int w_code,
           ptr_t grad_values, int64_t N, int64_t k, int64_t M, int64_t d) {
          int64_t bad;
          {
            py::gil_scoped_release nogil;
            bad = ACTSPACE_CALL_ISA(sparse_decode_grad_values)(
                P<const void>(grad_out), P<const void>(indices), idx_code, P<const void>(W),
                ldw, w_code, P<void>(grad_values), N, k, M, d);
          }
          check_bad(bad, M);
        });
  m.def("sparse_decode_build_csr",
        [](ptr_t indices, int idx_code, int64_t N, int64_t k, int64_t M, ptr_t offsets,
           ptr_t order) {
          int64_t bad;
          {
            py::gil_scoped_release nogil;
            bad = ACTSPACE_CALL_ISA(sparse_decode_build_csr)(
                P<const void>(indices), idx_code, N, k, M, P<int32_t>(offsets), P<int32_t>(order));
          }
          check_bad(bad, M);
        });
  m.def("sparse_decode_grad_W",
        [](ptr_t grad_out, ptr_t values, ptr_t offsets, ptr_t order, int64_t k, ptr_t W,
           int64_t ldw, int w_code, ptr_t grad_W, ptr_t grad_values, int64_t M, int64_t d) {
          py::gil_scoped_release nogil;
          ACTSPACE_CALL_ISA(sparse_decode_grad_W)(
              P<const void>(grad_out), P<const void>(values), P<const int32_t>(offsets),
              P<const int32_t>(order), k, P<const void>(W), ldw, w_code, P<void>(grad_W),
              P<void>(grad_values), M, d);
        });
}
#endif

#ifdef ACTSPACE_WITH_CUDA
void bind_sparse_decode_cuda(py::module_& m) {
  m.def("sparse_decode_forward_cuda",
        [](ptr_t values, ptr_t indices, int idx_code, ptr_t W, int64_t ldw, int w_code,
           ptr_t bias, ptr_t out, int64_t N, int64_t k, int64_t M, int64_t d, ptr_t stream) {
          cuda::sparse_decode_forward(P<const void>(values), P<const void>(indices), idx_code,
                                      P<const void>(W), ldw, w_code, P<const void>(bias),
                                      P<void>(out), N, k, M, d, bind::stream(stream));
        });
  m.def("sparse_decode_grad_values_cuda",
        [](ptr_t grad_out, ptr_t indices, int idx_code, ptr_t W, int64_t ldw, int w_code,
           ptr_t grad_values, int64_t N, int64_t k, int64_t M, int64_t d, ptr_t stream) {
          cuda::sparse_decode_grad_values(P<const void>(grad_out), P<const void>(indices),
                                          idx_code, P<const void>(W), ldw, w_code,
                                          P<void>(grad_values), N, k, M, d, bind::stream(stream));
        });
  m.def("sparse_decode_grad_W_atomic_cuda",
        [](ptr_t grad_out, ptr_t values, ptr_t indices, int idx_code, int acc_code,
           ptr_t grad_W_acc, int64_t N, int64_t k, int64_t M, int64_t d, ptr_t stream) {
          cuda::sparse_decode_grad_W_atomic(P<const void>(grad_out), P<const void>(values),
                                            P<const void>(indices), idx_code, acc_code,
                                            P<void>(grad_W_acc), N, k, M, d, bind::stream(stream));
        });
  m.def("sparse_decode_grad_W_csr_cuda",
        [](ptr_t grad_out, ptr_t values, ptr_t offsets, ptr_t order, int64_t k, ptr_t plan,
           int64_t n_items, int64_t n_split, int64_t chunk, int w_code, ptr_t grad_W, ptr_t part,
           int64_t M, int64_t d, ptr_t stream) {
          cuda::sparse_decode_grad_W_csr(P<const void>(grad_out), P<const void>(values),
                                         P<const int32_t>(offsets), P<const int32_t>(order), k,
                                         P<const int32_t>(plan), n_items, n_split, chunk,
                                         w_code, P<void>(grad_W), P<void>(part), M, d,
                                         bind::stream(stream));
        });
}
#endif
