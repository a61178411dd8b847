// Run-time choice among the per-ISA copies of the CPU kernels (see CMakeLists.txt).
// A kernel source declares its entry points with ACTSPACE_ISA_DECLARE-style blocks in
// its <family>.h for every namespace; bind.cpp calls ACTSPACE_CALL_ISA(fn)(args...).
#pragma once
#include <cstdlib>
#include <string>

namespace actspace {

// "avx512", "avx2" or "generic": the best copy compiled in that this CPU supports, capped
// by the environment variable ACTSPACE_ISA (same names) so that every copy can be tested
// on one machine. Read once per entry point, at its first call.
inline const char* best_isa() {
  const char* cap = std::getenv("ACTSPACE_ISA");
  const std::string want = cap ? cap : "";
  if (want == "generic") return "generic";
#if defined(__x86_64__) || defined(_M_X64)
#if defined(ACTSPACE_HAVE_AVX512)
  if (want != "avx2" && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return "avx512";
#endif
#if defined(ACTSPACE_HAVE_AVX2)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return "avx2";
#endif
#endif
  return "generic";
}

}  // namespace actspace

// Pick the function pointer `ns::fn` for the best ISA at run time (cached per call site).
#if defined(ACTSPACE_HAVE_AVX512)
#define ACTSPACE_IF_AVX512(fn) if (isa == "avx512") return &avx512::fn;
#else
#define ACTSPACE_IF_AVX512(fn)
#endif
#if defined(ACTSPACE_HAVE_AVX2)
#define ACTSPACE_IF_AVX2(fn) if (isa == "avx2") return &avx2::fn;
#else
#define ACTSPACE_IF_AVX2(fn)
#endif

#define ACTSPACE_CALL_ISA(fn)                                   \
  ([]() {                                                       \
    static const auto ptr = []() {                              \
      const std::string isa = ::actspace::best_isa();           \
      ACTSPACE_IF_AVX512(fn)                                    \
      ACTSPACE_IF_AVX2(fn)                                      \
      return &generic::fn;                                      \
    }();                                                        \
    return ptr;                                                 \
  }())
