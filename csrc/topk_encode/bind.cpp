// topk_encode: pybind11 entry points (raw pointers in, nothing allocated here).
#include <pybind11/pybind11.h>

#include "common/isa.h"
#include "topk_encode/topk_encode.h"

namespace py = pybind11;
using namespace actspace;

void bind_topk_encode(py::module_& m) {
  m.def("topk_encode_kernel_version", []() { return ACTSPACE_CALL_ISA(topk_encode_kernel_version)(); });
}
