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

# Families whose CUDA kernels passed the GPU test suite on a real GPU and beat the torch
# path there (bench/RESULTS.md, "GPU verification": an H200, 2026-12-04). Until a family is
# listed here CUDA tensors take the reference path; backend="kernel" forces our kernel
# (that is how the GPU tests verify it before it is routed to). topk_encode passed every
# check too but is not listed: on the H200 it was 0.36-0.96x the speed of matmul + topk
# (while holding 0.6-3% of its memory), so "auto" keeps the faster torch path.
VERIFIED_CUDA: frozenset[str] = frozenset({"sparse_decode", "stats"})

BACKENDS = ("auto", "kernel", "reference", "cuda_emulated")
# Where a kernel call goes (kernel_path): our CPU kernels, our CUDA kernels on a GPU, or the
# CUDA kernels of the emulated core on host memory (csrc/common/cuda_emulate.h: the CUDA
# sources compiled for the CPU, each block's threads as OS threads; CI runs them under
# ASan/UBSan and TSan). The emulated core is the module _core_cuda_emulated, found at the
# path in ACTSPACE_CUDA_EMULATED_CORE or beside _core; it is built only on request
# (cmake -DACTSPACE_CUDA_EMULATE=ON, see .ci/run).
CPU, CUDA, CUDA_EMULATED = "cpu", "cuda", "cuda_emulated"

_core_module = None
_emulated_module = None


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


def emulated_core():
    """The host-emulated CUDA core (_core_cuda_emulated), or None when it was not built."""
    global _emulated_module
    if _emulated_module is None:
        path = os.environ.get("ACTSPACE_CUDA_EMULATED_CORE", "")
        if path:
            import importlib.util  # noqa: PLC0415

            if os.path.isdir(path):
                hits = [f for f in os.listdir(path) if f.startswith("_core_cuda_emulated")
                        and f.endswith(".so")]
                if not hits:
                    raise FileNotFoundError(f"ACTSPACE_CUDA_EMULATED_CORE={path}: no "
                                            "_core_cuda_emulated*.so in that folder")
                path = os.path.join(path, hits[0])
            spec = importlib.util.spec_from_file_location("_core_cuda_emulated", path)
            if spec is None:
                raise FileNotFoundError(f"ACTSPACE_CUDA_EMULATED_CORE={path}: not a module")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            _emulated_module = mod
        else:
            try:
                from actspace import _core_cuda_emulated  # noqa: PLC0415
            except ImportError:
                _emulated_module = False
            else:
                _emulated_module = _core_cuda_emulated
    return _emulated_module or None


def cuda_built() -> bool:
    c = core()
    return bool(c is not None and c.build_info()["cuda"])


def kernel_path(family: str, device: torch.device, backend: str) -> str | None:
    """Where `family` runs for tensors on `device`: CPU, CUDA or CUDA_EMULATED, or None for
    the reference path. backend: 'auto' (our kernel where it is built and, on CUDA,
    verified), 'kernel' (ours or an error), 'reference', 'cuda_emulated' (CPU tensors
    through the CUDA kernels of the emulated core; for tests)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    if backend == "reference":
        return None
    if backend == CUDA_EMULATED:
        if device.type != "cpu":
            raise ValueError(f"backend='cuda_emulated' runs the CUDA kernels on host memory: "
                             f"the tensors must be on the CPU, got {device}")
        if emulated_core() is None:
            raise RuntimeError("backend='cuda_emulated': the emulated core is not built "
                               "(cmake -DACTSPACE_CUDA_EMULATE=ON, then point "
                               "ACTSPACE_CUDA_EMULATED_CORE at _core_cuda_emulated*.so)")
        return CUDA_EMULATED
    if device.type == "cpu":
        available = core() is not None
    elif device.type == "cuda":
        available = cuda_built()
        if backend == "auto":
            forced = os.environ.get("ACTSPACE_CUDA_KERNELS", "") == "1"
            return CUDA if available and (family in VERIFIED_CUDA or forced) else None
    else:
        available = False
    if backend == "kernel" and not available:
        raise RuntimeError(
            f"backend='kernel': no compiled {family} kernel for device {device} "
            f"(build_info: {core().build_info() if core() else 'extension not built'})"
        )
    return (CPU if device.type == "cpu" else CUDA) if available else None


def use_kernel(family: str, device: torch.device, backend: str) -> bool:
    """True to run one of our compiled kernels, False for the reference path."""
    return kernel_path(family, device, backend) is not None


def module_for(path: str):
    """The compiled module holding the entry points of a kernel path."""
    return emulated_core() if path == CUDA_EMULATED else core()


def on_device(path: str, device: torch.device):
    """Context making `device` current for the launches of a real CUDA path (a model split
    over several GPUs launches on the tensors' device, not the current one)."""
    import contextlib  # noqa: PLC0415

    return torch.cuda.device(device) if path == CUDA else contextlib.nullcontext()


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
    """cudaStream_t of torch's current stream on device, 0 on CPU (and for the emulator)."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation type: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Load the compiled core now, not on the first op call: that call may happen while
# torch.compile traces, and Dynamo cannot trace the import and global assignment.
core()
