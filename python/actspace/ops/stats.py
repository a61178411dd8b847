"""actspace.ops.stats: streaming statistics kernels.

State layouts are defined in actspace.reference.stats (the contract): a moment state is a
dict of float64/int64 [d] tensors, a latent state a dict of per-latent tensors.

    st = moments_init(d); moments_update(st, x)      # x [N, d], any float dtype
    st = moments_merge(a, b)                         # Chan merge
    ls = latent_init(M, top_t=16); latent_update(ls, values, indices, token_offset)

The updates run on our kernels (one pass, float64 state) on CPU, and on CUDA once the
family is verified on a GPU (see ops._common.use_kernel); the reference path otherwise.
"""
from __future__ import annotations


import torch

from ..reference import stats as _ref
from ._common import (CPU, as_index, check_float, csr_by_latent, dtype_code, kernel_path,
                      module_for, on_device, stream_handle, to_torch)

MOMENT_FIELDS = _ref.MOMENT_FIELDS
moments_init = _ref.moments_init
moments_merge = _ref.moments_merge
latent_init = _ref.latent_init
latent_merge = _ref.latent_merge

_LATENT_FIELDS = {"count": torch.int64, "sum": torch.float64, "sumsq": torch.float64,
                  "hist": torch.int64, "top_values": torch.float32, "top_tokens": torch.int64}


def _check_field(state: dict, key: str, dtype: torch.dtype, shape: tuple, device) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"state is missing the field {key!r}")
    t = state[key]
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"state[{key!r}] must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(f"state[{key!r}] must be {str(dtype).replace('torch.', '')} "
                         f"{list(shape)}, got {str(t.dtype).replace('torch.', '')} "
                         f"{list(t.shape)}")
    if t.device != device:
        raise ValueError(f"state[{key!r}] is on {t.device} but the input is on {device}")
    return t


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x with contiguous channels; rows may keep any stride (the kernels take it).
    A tensor torch calls contiguous can still have stride(0) < d when it has one row
    ([1, d] views of a column), so those are copied too."""
    if x.stride(1) != 1 or x.stride(0) < x.shape[1]:
        x = x.clone(memory_format=torch.contiguous_format) if x.is_contiguous() else x.contiguous()
    return x


def moments_update(state: dict, x, *, backend: str = "auto") -> None:
    """Fold x [N, d] into the moment state in place (float32/bf16/f16/f64 input)."""
    x = to_torch(x, "x")[0]
    check_float(x, "x")
    if not isinstance(state, dict) or "mean" not in state:
        raise TypeError("state must be a moment state dict (see moments_init)")
    d = state["mean"].shape[0]
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape [N, d] with d={d}, got {list(x.shape)}")
    fields = [_check_field(state, key, torch.int64 if key in ("zeros", "nonfinite")
                           else torch.float64, (d,), x.device) for key in MOMENT_FIELDS]
    if x.shape[0] == 0 or d == 0:
        return
    path = kernel_path("stats", x.device, backend)
    if path is None:
        _ref.moments_update(state, x)
        return
    x = _rows(x.detach())
    # Kernels write the state in place; work on contiguous copies if a field is a view.
    work = [f if f.is_contiguous() else f.contiguous() for f in fields]
    ptrs = [f.data_ptr() for f in work]
    N = x.shape[0]
    c = module_for(path)
    if path != CPU:
        chunks = c.stats_moments_cuda_chunks(N)
        part_f = torch.empty(chunks * 8 * d, dtype=torch.float64, device=x.device)
        part_i = torch.empty(chunks * 2 * d, dtype=torch.int64, device=x.device)
        with on_device(path, x.device):  # kernels launch on the current device
            c.stats_moments_update_cuda(x.data_ptr(), dtype_code(x), N, d, x.stride(0), ptrs,
                                        part_f.data_ptr(), part_i.data_ptr(),
                                        stream_handle(x.device))
    else:
        c.stats_moments_update(x.data_ptr(), dtype_code(x), N, d, x.stride(0), ptrs)
    for f, w in zip(fields, work):
        if f is not w:
            f.copy_(w)


def firing_csr(values: torch.Tensor, indices: torch.Tensor, M: int) -> torch.Tensor:
    """The CUDA latent kernel's workspace: the firing slots (index >= 0 and value > 0, the
    kernels' rule) of values/indices [N, k] grouped by latent in slot order, as int64
    [offsets (M+1) | order (N*k)]. Built with a stable sort (no atomics), so the float64
    sums add in the same order as on CPU, on every run."""
    fire = (indices >= 0) & (values > 0)
    return torch.cat(csr_by_latent(torch.where(fire, indices, -1), M, torch.int64))


def latent_update(state: dict, values, indices, token_offset: int, *,
                  backend: str = "auto") -> None:
    """Fold a sparse code values/indices [N, k] into the latent state in place.

    indices int32/int64, -1 (any negative) = empty slot; row n is token token_offset + n."""
    values = to_torch(values, "values")[0]
    indices = to_torch(indices, "indices")[0]
    check_float(values, "values")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if indices.shape != values.shape or values.dim() != 2:
        raise ValueError(f"values and indices must both be [N, k], got {list(values.shape)} "
                         f"and {list(indices.shape)}")
    token_offset = as_index(token_offset, "token_offset")
    if token_offset < 0:
        raise ValueError(f"token_offset must be >= 0, got {token_offset}")
    if indices.device != values.device:
        raise ValueError(f"indices is on {indices.device} but values is on {values.device}")
    if not isinstance(state, dict) or "hist" not in state:
        raise TypeError("state must be a latent state dict (see latent_init)")
    M, n_bins = state["hist"].shape
    T = state["top_values"].shape[1]
    fields = {key: _check_field(state, key, dt, (M, n_bins) if key == "hist" else
                                (M, T) if key.startswith("top_") else (M,), values.device)
              for key, dt in _LATENT_FIELDS.items()}
    if values.shape[0] == 0 or values.shape[1] == 0:
        return
    top = int(indices.max())  # one device sync on CUDA: out-of-range ids must not pass silently
    if top >= M:
        raise ValueError(f"indices must be < M={M} (or -1 for an empty slot), got max {top}")
    lo, hi = (float(v) for v in state["hist_range"].tolist())
    if not hi > lo:
        raise ValueError(f"state['hist_range'] must be [log10_min, log10_max] with "
                         f"log10_min < log10_max, got {[lo, hi]}")
    path = kernel_path("stats", values.device, backend)
    if path is None:
        _ref.latent_update(state, values, indices, int(token_offset))
        return
    values, indices = _rows(values.detach()), _rows(indices)
    work = {key: f if f.is_contiguous() else f.contiguous() for key, f in fields.items()}
    N, k = values.shape
    c = module_for(path)
    state_ptrs = [work[key].data_ptr() for key in _LATENT_FIELDS]
    if path != CPU:
        ws = firing_csr(values, indices, M)
        with on_device(path, values.device):
            c.stats_latent_update_cuda(values.data_ptr(), dtype_code(values), values.stride(0),
                                       N, k, M, T, n_bins, lo, hi, token_offset,
                                       *state_ptrs, ws.data_ptr(), stream_handle(values.device))
    else:
        ws = torch.empty(M + 1 + N * k, dtype=torch.int64)
        bad = c.stats_latent_update(values.data_ptr(), dtype_code(values), values.stride(0),
                                    indices.data_ptr(), dtype_code(indices), indices.stride(0),
                                    N, k, M, T, n_bins, lo, hi, token_offset, *state_ptrs,
                                    ws.data_ptr())
        if bad:  # unreachable after the check above; kept as a backstop
            raise ValueError(f"indices: {bad} entries were >= M={M}")
    for key, f in fields.items():
        if f is not work[key]:
            f.copy_(work[key])
