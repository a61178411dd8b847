"""Shared plumbing of the ops layer: argument validation that names the argument,
torch/NumPy/CuPy interchange (zero-copy), the dtype codes the kernels understand, and the
choice between our kernels and the pure-torch reference."""
from __future__ import annotations

import os
from typing import Any

import torch

# Must match csrc/common/dtype.h
DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.int32: 4,
    torch.int64: 5,
}
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# Families whose CUDA kernels passed the GPU test suite on a real GPU (bench/RESULTS.md).
# Until a family is listed here CUDA tensors take the reference path; backend="kernel"
# forces our kernel (that is how the GPU tests verify it before it is routed to).
VERIFIED_CUDA: frozenset[str] = frozenset()

_core_module = None


def core():
    """The compiled module, or None when actspace was imported from a source tree without it."""
    global _core_module
    if _core_module is None:
        isa = os.environ.get("ACTSPACE_ISA", "")
        if isa not in ("", "generic", "avx2", "avx512"):
            raise ValueError(f"environment variable ACTSPACE_ISA must be generic, avx2 or "
                             f"avx512 (a cap on the CPU kernels' instruction set), got {isa!r}")
        try:
            from actspace import _core  # noqa: PLC0415
        except ImportError:
            _core_module = False
        else:
            _core_module = _core
    return _core_module or None


def cuda_built() -> bool:
    c = core()
    return bool(c is not None and c.build_info()["cuda"])


def use_kernel(family: str, device: torch.device, backend: str) -> bool:
    """True to run our compiled kernel, False for the reference path."""
    if backend not in ("auto", "kernel", "reference"):
        raise ValueError(f"backend must be 'auto', 'kernel' or 'reference', got {backend!r}")
    if backend == "reference":
        return False
    if device.type == "cpu":
        available = core() is not None
    elif device.type == "cuda":
        available = cuda_built()
        if backend == "auto":
            forced = os.environ.get("ACTSPACE_CUDA_KERNELS", "") == "1"
            return available and (family in VERIFIED_CUDA or forced)
    else:
        available = False
    if backend == "kernel" and not available:
        raise RuntimeError(
            f"backend='kernel': no compiled {family} kernel for device {device} "
            f"(build_info: {core().build_info() if core() else 'extension not built'})"
        )
    return available


# --------------------------------------------------------------------------- interchange
def to_torch(obj: Any, name: str) -> tuple[torch.Tensor, str]:
    """Return (tensor, kind) with kind in {'torch', 'numpy', 'cupy'}; zero-copy where the
    array allows it (NumPy arrays with negative strides or a non-native byte order are
    copied: torch cannot view them). Inputs are never written, so read-only arrays are fine."""
    if isinstance(obj, torch.Tensor):
        return obj, "torch"
    if any(c.__module__.split(".")[0] == "numpy" for c in type(obj).__mro__):
        return _from_numpy(obj, name), "numpy"
    if type(obj).__module__.startswith("cupy"):
        return torch.from_dlpack(obj), "cupy"
    raise TypeError(
        f"{name} must be a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(obj).__name__}"
    )


def _from_numpy(arr, name: str) -> torch.Tensor:
    import warnings

    import numpy as np

    if not isinstance(arr, np.ndarray) or isinstance(arr, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain numpy.ndarray (masked arrays have no "
                        f"defined values under the mask), got {type(arr).__name__}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if any(st < 0 for st in arr.strides):
        arr = np.ascontiguousarray(arr)
    with warnings.catch_warnings():   # torch warns about read-only arrays; we only read
        warnings.filterwarnings("ignore", message=".*not writable.*")
        try:
            return torch.from_numpy(arr)
        except TypeError as e:
            raise TypeError(f"{name}: numpy dtype {arr.dtype} is not supported ({e})") from None


def as_index(v: Any, name: str) -> int:
    """v as a Python int (int, NumPy/torch integer scalars); bool and floats are refused."""
    import operator

    try:
        if isinstance(v, bool):
            raise TypeError
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {v!r}") from None


def from_torch(t: torch.Tensor, kind: str):
    if kind == "torch":
        return t
    if kind == "numpy":
        return t.detach().cpu().numpy()
    import cupy  # noqa: PLC0415

    return cupy.from_dlpack(t.detach())


def optional_to_torch(obj: Any, name: str) -> torch.Tensor | None:
    return None if obj is None else to_torch(obj, name)[0]


def csr_by_latent(idx: torch.Tensor, M: int, index_dtype=torch.int32):
    """CSR of the slots of idx [N, k] by latent, with torch ops (the CUDA paths use it:
    a stable sort and a binary search, no atomics, so it is deterministic and each
    latent's slots stay in slot order) -> (offsets [M+1], order [N·k]) in index_dtype.
    Negative indices are empty slots: they sort last, past offsets[M]."""
    flat = idx.reshape(-1).long()
    key = torch.where(flat < 0, torch.full_like(flat, M), flat)
    keys, order = torch.sort(key, stable=True)
    offsets = torch.searchsorted(keys, torch.arange(M + 1, device=idx.device))
    return offsets.to(index_dtype), order.to(index_dtype)


# --------------------------------------------------------------------------- validation
def check_float(t: torch.Tensor, name: str, dtypes=FLOAT_DTYPES) -> None:
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({names}), got {t.dtype}")


def check_shape(t: torch.Tensor, name: str, shape: tuple, what: str) -> None:
    """shape holds ints or None (any size); what is the expected shape in words, e.g. '[M, d]'."""
    if t.dim() != len(shape) or any(s is not None and s != ts for s, ts in zip(shape, t.shape)):
        raise ValueError(f"{name} must have shape {what}, got {list(t.shape)}")


def check_same_device(ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but the input is on {ref.device}")


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def stream_handle(device: torch.device) -> int:
    """cudaStream_t of torch's current stream on device, 0 on CPU."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation type: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Load the compiled core now, not on the first op call: that call may happen while
# torch.compile traces, and Dynamo cannot trace the import and global assignment.
core()
