// The pybind11 module `actspace._core` (or `_core_cuda_emulated`, the host-emulated CUDA
// build: common/cuda_emulate.h): build facts plus each kernel family's entry points
// (csrc/<family>/bind.cpp; the families come from csrc/families.txt through the generated
// actspace_families.inc). Everything crosses as raw pointers (uintptr_t), sizes, strides,
// dtype codes and a stream handle; Python allocates all memory.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/isa.h"

#ifdef ACTSPACE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

// bind_<family>: the CPU entry points; bind_<family>_cuda: the *_cuda ones (real or emulated)
#define ACTSPACE_FAMILY(f) void bind_##f(py::module_& m); void bind_##f##_cuda(py::module_& m);
#include "actspace_families.inc"
#undef ACTSPACE_FAMILY
#ifdef ACTSPACE_CUDA_EMULATE
void bind_emulate_selftest(py::module_& m);  // common/emulate_selftest.cpp
#endif

static py::dict build_info() {
  py::dict d;
  d["version"] = ACTSPACE_VERSION;
  py::list families;
#define ACTSPACE_FAMILY(f) families.append(#f);
#include "actspace_families.inc"
#undef ACTSPACE_FAMILY
  d["families"] = families;
#ifdef ACTSPACE_CUDA_EMULATE
  d["cuda_emulated"] = true;
#else
  d["cuda_emulated"] = false;
#endif
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

PYBIND11_MODULE(ACTSPACE_MODULE_NAME, m) {
  m.doc() = "actspace compiled kernels (raw-pointer interface; see actspace.ops)";
  m.def("build_info", &build_info);
#ifdef ACTSPACE_CUDA_EMULATE
  bind_emulate_selftest(m);
#else  // the emulated core holds the CUDA entry points only
#define ACTSPACE_FAMILY(f) bind_##f(m);
#include "actspace_families.inc"
#undef ACTSPACE_FAMILY
#endif
#ifdef ACTSPACE_WITH_CUDA
#define ACTSPACE_FAMILY(f) bind_##f##_cuda(m);
#include "actspace_families.inc"
#undef ACTSPACE_FAMILY
#endif
}
