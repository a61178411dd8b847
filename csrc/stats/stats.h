// stats: kernel entry points, declared once per ISA namespace (see common/isa.h).
#pragma once
#include <cstdint>

#include "common/dtype.h"

#define ACTSPACE_DECLARE_STATS(ns) \
  namespace ns {                    \
  int stats_kernel_version();        \
  }

namespace actspace {
ACTSPACE_DECLARE_STATS(generic)
ACTSPACE_DECLARE_STATS(avx2)
ACTSPACE_DECLARE_STATS(avx512)
}  // namespace actspace
