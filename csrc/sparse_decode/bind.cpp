// sparse_decode: pybind11 entry points (raw pointers in, nothing allocated here).
#include <pybind11/pybind11.h>

#include "common/isa.h"
#include "sparse_decode/sparse_decode.h"

namespace py = pybind11;
using namespace actspace;

void bind_sparse_decode(py::module_& m) {
  m.def("sparse_decode_kernel_version", []() { return ACTSPACE_CALL_ISA(sparse_decode_kernel_version)(); });
}
