"""Pure-torch implementations of every kernel family, float64-capable.

They define the semantics the kernels must reproduce, serve as the test oracle, and are
the path CUDA tensors take until a CUDA kernel has been verified on a real GPU."""
from .sparse_decode import sparse_decode
from .topk_encode import topk_encode, topk_preactivation

__all__ = ["topk_encode", "topk_preactivation", "sparse_decode"]
