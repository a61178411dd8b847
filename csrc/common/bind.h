// Helpers shared by the families' pybind11 bindings (csrc/<family>/bind.cpp): every pointer
// and stream crosses from Python as an integer (tensor.data_ptr(), stream.cuda_stream) and is
// turned into the kernels' convention (common/cuda.cuh) here, in one way.
#pragma once
#include <cstdint>

namespace actspace {
namespace bind {
using ptr_t = uintptr_t;
template <typename T> inline T* P(ptr_t p) { return reinterpret_cast<T*>(p); }
inline void* stream(ptr_t s) { return reinterpret_cast<void*>(s); }
}  // namespace bind
}  // namespace actspace
