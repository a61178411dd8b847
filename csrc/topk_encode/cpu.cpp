// topk_encode CPU kernels. Compiled once per ISA into namespace actspace::ACTSPACE_ISA.
#include "topk_encode/topk_encode.h"

namespace actspace {
namespace ACTSPACE_ISA {

int topk_encode_kernel_version() { return 1; }

}  // namespace ACTSPACE_ISA
}  // namespace actspace
