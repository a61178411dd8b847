// Two deliberately broken kernels, built only into the emulated core, that CI runs to prove
// the sanitizers are live in the Python process (.ci/emulated_cuda.sh): a launch without its
// tail guard must be reported by AddressSanitizer, a shared-memory exchange without its
// __syncthreads by ThreadSanitizer. Never called by the library.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "common/cuda.cuh"

namespace py = pybind11;

namespace {

// out[i] = in[i] + 1 for i < n, but the `if (i >= n) return;` guard is missing.
__global__ void unguarded_tail(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  (void)n;
  out[i] = in[i] + 1.0f;
}

// Each thread writes its slot and reads its neighbour's without a barrier in between.
__global__ void missing_barrier(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = static_cast<int>(threadIdx.x);
  // __syncthreads();  <- the barrier this kernel needs
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

}  // namespace

void bind_emulate_selftest(py::module_& m) {
  m.def("_selftest_broken_kernel", [](const std::string& which) {
    if (which == "tail") {
      std::vector<float> in(100, 1.0f), out(100);  // 100 elements, 128 threads
      ACTSPACE_LAUNCH(dim3(1), dim3(128), 0, nullptr, unguarded_tail)(in.data(), out.data(), 100);
    } else if (which == "race") {
      std::vector<int> out(64);
      ACTSPACE_LAUNCH(dim3(1), dim3(64), 0, nullptr, missing_barrier)(out.data());
    } else {
      throw std::invalid_argument("which must be 'tail' or 'race'");
    }
  }, "Run a deliberately broken kernel (sanitizer self-test of the emulated core; CI only).");
}
