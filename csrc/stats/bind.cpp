// stats: pybind11 entry points (raw pointers in, nothing allocated here).
#include <pybind11/pybind11.h>

#include "common/isa.h"
#include "stats/stats.h"

namespace py = pybind11;
using namespace actspace;

void bind_stats(py::module_& m) {
  m.def("stats_kernel_version", []() { return ACTSPACE_CALL_ISA(stats_kernel_version)(); });
}
