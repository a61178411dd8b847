// topk_encode: kernel entry points, declared once per ISA namespace (see common/isa.h).
#pragma once
#include <cstdint>

#include "common/dtype.h"

#define ACTSPACE_DECLARE_TOPK_ENCODE(ns) \
  namespace ns {                    \
  int topk_encode_kernel_version();        \
  }

namespace actspace {
ACTSPACE_DECLARE_TOPK_ENCODE(generic)
ACTSPACE_DECLARE_TOPK_ENCODE(avx2)
ACTSPACE_DECLARE_TOPK_ENCODE(avx512)
}  // namespace actspace
