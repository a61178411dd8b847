// Dtype codes shared by Python (actspace/ops/_common.py: DTYPE_CODES) and the kernels,
// and scalar conversions between the storage types and float.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

// Each per-ISA copy of the CPU kernels (CMakeLists.txt) gets its own inline namespace, so
// the inline functions below are distinct symbols per ISA and the linker can never hand
// the generic kernels an AVX-512 copy of them.
#define ACTSPACE_CAT_(a, b) a##b
#define ACTSPACE_CAT(a, b) ACTSPACE_CAT_(a, b)
#ifdef ACTSPACE_ISA
#define ACTSPACE_DTYPE_NS ACTSPACE_CAT(dtype_, ACTSPACE_ISA)
#else
#define ACTSPACE_DTYPE_NS dtype_host
#endif

namespace actspace {
inline namespace ACTSPACE_DTYPE_NS {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3, kI32 = 4, kI64 = 5 };

inline const char* dtype_name(int code) {
  switch (code) {
    case kF32: return "float32";
    case kF16: return "float16";
    case kBF16: return "bfloat16";
    case kF64: return "float64";
    case kI32: return "int32";
    case kI64: return "int64";
    default: return "unknown";
  }
}

// Storage types. bf16/f16 are raw bit patterns; arithmetic always happens in float.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) { man <<= 1; --exp; }
      u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absu < 0x38800000u) {  // subnormal or zero in f16
    if (absu < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t exp = absu >> 23, man = (absu & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // 14 - (exp - 127) + 10 - 23 ... places to drop
    uint32_t half = 1u << (shift - 1);
    uint32_t r = man >> shift, rem = man & ((1u << shift) - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = absu - 0x38000000u;  // rebias exponent 127 -> 15
  uint32_t lsb = (r >> 13) & 1u;
  r += 0xfffu + lsb;
  return static_cast<uint16_t>(sign | (r >> 13));
}

// The dtype code of a C++ storage type (the inverse of the dispatchers below).
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr int code = kF32; };
template <> struct DTypeOf<double> { static constexpr int code = kF64; };
template <> struct DTypeOf<bf16_t> { static constexpr int code = kBF16; };
template <> struct DTypeOf<f16_t> { static constexpr int code = kF16; };
template <> struct DTypeOf<int32_t> { static constexpr int code = kI32; };
template <> struct DTypeOf<int64_t> { static constexpr int code = kI64; };

// Load/store any storage type as float (double stays double through Acc<double>).
template <typename T> struct Scalar;
template <> struct Scalar<float> {
  using acc = float;
  static inline float load(const float* p) { return *p; }
  static inline void store(float* p, float v) { *p = v; }
};
template <> struct Scalar<double> {
  using acc = double;
  static inline double load(const double* p) { return *p; }
  static inline void store(double* p, double v) { *p = v; }
};
template <> struct Scalar<bf16_t> {
  using acc = float;
  static inline float load(const bf16_t* p) { return bf16_to_float(p->bits); }
  static inline void store(bf16_t* p, float v) { p->bits = float_to_bf16(v); }
};
template <> struct Scalar<f16_t> {
  using acc = float;
  static inline float load(const f16_t* p) { return f16_to_float(p->bits); }
  static inline void store(f16_t* p, float v) { p->bits = float_to_f16(v); }
};

// The one set of dtype dispatchers (CPU and CUDA sources alike): call fn(T{}) with a value
// of the C++ type a dtype code stands for and return what fn returns; `what` names the
// argument in the error for a code the kernel does not take.
//   dispatch_float: float32, float64, bfloat16, float16 -> float, double, bf16_t, f16_t
//   dispatch_acc:   the accumulation types, float32 or float64 -> float, double
//   dispatch_index: int32 or int64 -> int32_t, int64_t
[[noreturn]] inline void bad_dtype(const char* what, int code, const char* expected) {
  throw std::invalid_argument(std::string(what) + ": unsupported dtype " + dtype_name(code) +
                              " (expected " + expected + ")");
}

template <typename Fn>
inline auto dispatch_float(int code, const char* what, Fn&& fn) -> decltype(fn(float{})) {
  switch (code) {
    case kF32: return fn(float{});
    case kF64: return fn(double{});
    case kBF16: return fn(bf16_t{});
    case kF16: return fn(f16_t{});
    default: bad_dtype(what, code, "float32, float64, bfloat16 or float16");
  }
}

template <typename Fn>
inline auto dispatch_acc(int code, const char* what, Fn&& fn) -> decltype(fn(float{})) {
  switch (code) {
    case kF32: return fn(float{});
    case kF64: return fn(double{});
    default: bad_dtype(what, code, "float32 or float64");
  }
}

template <typename Fn>
inline auto dispatch_index(int code, const char* what, Fn&& fn) -> decltype(fn(int32_t{})) {
  switch (code) {
    case kI32: return fn(int32_t{});
    case kI64: return fn(int64_t{});
    default: bad_dtype(what, code, "int32 or int64");
  }
}

}  // inline namespace ACTSPACE_DTYPE_NS
}  // namespace actspace
