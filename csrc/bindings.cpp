// The pybind11 module `actspace._core`: build facts plus each kernel family's entry
// points (csrc/<family>/bind.cpp). Everything crosses as raw pointers (uintptr_t),
// sizes, strides, dtype codes and a stream handle; Python allocates all memory.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/isa.h"

#ifdef ACTSPACE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

void bind_topk_encode(py::module_& m);
void bind_sparse_decode(py::module_& m);
void bind_stats(py::module_& m);

static py::dict build_info() {
  py::dict d;
  d["version"] = ACTSPACE_VERSION;
#ifdef ACTSPACE_WITH_CUDA
  d["cuda"] = true;
  py::list archs;
  std::string s = ACTSPACE_CUDA_ARCHS_STR, cur;
  for (char c : s + ",") {  // CMake passes the list comma-separated
    if (c == ',') { if (!cur.empty()) archs.append(cur); cur.clear(); } else cur += c;
  }
  d["cuda_archs"] = archs;
#else
  d["cuda"] = false;
  d["cuda_archs"] = py::list();
#endif
#ifdef ACTSPACE_OPENMP
  d["openmp"] = true;
  d["openmp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_max_threads"] = 1;
#endif
  py::list compiled;
  compiled.append("generic");
#ifdef ACTSPACE_HAVE_AVX2
  compiled.append("avx2");
#endif
#ifdef ACTSPACE_HAVE_AVX512
  compiled.append("avx512");
#endif
  d["simd"] = actspace::best_isa();
  d["simd_compiled"] = compiled;
  return d;
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "actspace compiled kernels (raw-pointer interface; see actspace.ops)";
  m.def("build_info", &build_info);
  bind_topk_encode(m);
  bind_sparse_decode(m);
  bind_stats(m);
}
