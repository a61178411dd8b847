// stats CPU kernels. Compiled once per ISA into namespace actspace::ACTSPACE_ISA.
#include "stats/stats.h"

namespace actspace {
namespace ACTSPACE_ISA {

int stats_kernel_version() { return 1; }

}  // namespace ACTSPACE_ISA
}  // namespace actspace
