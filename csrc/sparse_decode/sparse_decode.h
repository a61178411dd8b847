// sparse_decode: kernel entry points, declared once per ISA namespace (see common/isa.h).
#pragma once
#include <cstdint>

#include "common/dtype.h"

#define ACTSPACE_DECLARE_SPARSE_DECODE(ns) \
  namespace ns {                    \
  int sparse_decode_kernel_version();        \
  }

namespace actspace {
ACTSPACE_DECLARE_SPARSE_DECODE(generic)
ACTSPACE_DECLARE_SPARSE_DECODE(avx2)
ACTSPACE_DECLARE_SPARSE_DECODE(avx512)
}  // namespace actspace
