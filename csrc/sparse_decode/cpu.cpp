// sparse_decode CPU kernels. Compiled once per ISA into namespace actspace::ACTSPACE_ISA.
#include "sparse_decode/sparse_decode.h"

namespace actspace {
namespace ACTSPACE_ISA {

int sparse_decode_kernel_version() { return 1; }

}  // namespace ACTSPACE_ISA
}  // namespace actspace
