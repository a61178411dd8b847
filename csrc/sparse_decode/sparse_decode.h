// sparse_decode: kernel entry points, declared once per ISA namespace (see common/isa.h),
// plus the CUDA launchers when the CUDA sources are compiled in.
//
// Conventions shared by every entry point (Python in actspace/ops/sparse_decode.py casts
// the small arrays so the kernels see few type combinations):
//   values, grad_values, grad_out, bias : "acc" type = double for float64 W, float otherwise,
//                                         contiguous ([N,k], [N,k], [N,d], [d]).
//   indices [N,k] contiguous, int32 (kI32) or int64 (kI64); -1 = empty slot.
//   W [M,d] rows `ldw` elements apart, unit column stride, storage type w_code.
//   out / grad_W contiguous in W's storage type.
// Kernels allocate nothing; every output and workspace comes from Python.
#pragma once
#include <cstdint>

#include "common/dtype.h"

#define ACTSPACE_DECLARE_SPARSE_DECODE(ns)                                                   \
  namespace ns {                                                                             \
  /* out[n] = sum_j values[n,j] * W[indices[n,j]] (+ bias). Returns #bad indices (0 ok). */ \
  int64_t sparse_decode_forward(const void* values, const void* indices, int idx_code,      \
                                const void* W, int64_t ldw, int w_code, const void* bias,   \
                                void* out, int64_t N, int64_t k, int64_t M, int64_t d);      \
  /* grad_values[n,j] = <grad_out[n], W[indices[n,j]]>, row-major (W rows gathered). */      \
  int64_t sparse_decode_grad_values(const void* grad_out, const void* indices, int idx_code, \
                                    const void* W, int64_t ldw, int w_code,                 \
                                    void* grad_values, int64_t N, int64_t k, int64_t M,     \
                                    int64_t d);                                             \
  /* Counting sort of the N*k slots by latent: offsets [M+1], order [N*k] (flat n*k+j,     \
     ascending within a latent). Returns #bad indices. */                                    \
  int64_t sparse_decode_build_csr(const void* indices, int idx_code, int64_t N, int64_t k,  \
                                  int64_t M, int32_t* offsets, int32_t* order);              \
  /* Latent-major: grad_W[m] = sum over the latent's slots of values * grad_out[n], in CSR  \
     order (deterministic). With grad_values != null also writes grad_values from W[m]. */  \
  void sparse_decode_grad_W(const void* grad_out, const void* values, const int32_t* offsets, \
                            const int32_t* order, int64_t k, const void* W, int64_t ldw,    \
                            int w_code, void* grad_W, void* grad_values, int64_t M,         \
                            int64_t d);                                                     \
  }

namespace actspace {
ACTSPACE_DECLARE_SPARSE_DECODE(generic)
ACTSPACE_DECLARE_SPARSE_DECODE(avx2)
ACTSPACE_DECLARE_SPARSE_DECODE(avx512)

#ifdef ACTSPACE_WITH_CUDA
// CUDA launchers (csrc/sparse_decode/cuda.cu): same layouts as above, pointers on the
// device, enqueued on `stream` (a cudaStream_t), never synchronising. Index range is
// assumed validated by Python; out-of-range slots are skipped as a backstop.
namespace cuda {
void sparse_decode_forward(const void* values, const void* indices, int idx_code,
                           const void* W, int64_t ldw, int w_code, const void* bias, void* out,
                           int64_t N, int64_t k, int64_t M, int64_t d, void* stream);
void sparse_decode_grad_values(const void* grad_out, const void* indices, int idx_code,
                               const void* W, int64_t ldw, int w_code, void* grad_values,
                               int64_t N, int64_t k, int64_t M, int64_t d, void* stream);
// grad_W_acc [M,d] in acc type, zero-initialised by the caller; atomics, order not fixed.
void sparse_decode_grad_W_atomic(const void* grad_out, const void* values, const void* indices,
                                 int idx_code, int acc_code, void* grad_W_acc, int64_t N,
                                 int64_t k, int64_t M, int64_t d, void* stream);
// Deterministic latent-major path from a CSR (offsets [M+1] int32, order [N*k] int32 of
// flat slots, ascending within a latent); writes every row of grad_W (W storage type).
// plan int32 [n_items + 2M + n_split], built by Python (ops/sparse_decode.py grad_W_plan):
//   item_latent [n_items]: the latent of each work item, M past the last item;
//   item_first [M]: the index of the latent's first item (its chunk q is item - item_first);
//   part_first [M]: -1 for a latent in one item (<= chunk slots, written straight to gW),
//                   else the first of its ceil(slots / chunk) partial rows in `part`;
//   split_latent [n_split]: the split latents in increasing order, M past the last one.
// part: acc type [rows, d], rows >= the partial rows part_first names (never read elsewhere).
void sparse_decode_grad_W_csr(const void* grad_out, const void* values, const int32_t* offsets,
                              const int32_t* order, int64_t k, const int32_t* plan,
                              int64_t n_items, int64_t n_split, int64_t chunk, int w_code,
                              void* grad_W, void* part, int64_t M, int64_t d, void* stream);
}  // namespace cuda
#endif
}  // namespace actspace
