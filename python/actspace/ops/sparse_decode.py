"""actspace.ops.sparse_decode: x_hat = Σ_j values[n,j] · W_dec[indices[n,j]] + b_dec.

Why this module exists: a sparse dictionary decode touches only k rows of W_dec per token,
so it should cost N·k·d, never N·M·d, in memory and time, forward and backward. This file
validates arguments, picks our kernel or the pure-torch reference, allocates every output
and workspace (the kernels allocate nothing) and wires autograd through
torch.library custom ops so the op also works under torch.compile.

Backward: grad_values by gathered dot products; grad_W_dec latent-major from a CSR of the
slots sorted by latent (bitwise-repeatable; on CPU fused with grad_values so each W_dec
row is read once), or on CUDA by atomics for float32/float64 W (the default there, faster,
order not fixed; they add straight into grad_W, no [M, d] accumulator). bfloat16/float16 W
always takes the CSR path on CUDA: atomics in those types would round every addition, and a
float32 [M, d] accumulator is 2 GB at M=131072, d=4096. The CUDA CSR path splits popular
latents into fixed chunks of GRAD_W_CHUNK slots (grad_W_plan) so that a latent firing on
every row is not one serial chain; still deterministic, with a bounded partial buffer.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import reference
from ..reference.sparse_decode import sparse_decode_backward as _ref_backward
from ._common import (CPU, CUDA, acc_dtype, check_float, check_same_device, check_shape,
                      csr_by_latent, dtype_code, from_torch, kernel_path, module_for, on_device,
                      optional_to_torch, stream_handle, to_torch)

_INT32_MAX = 2**31 - 1


def _validate(values, indices, W_dec, b_dec):
    check_float(values, "values")
    check_float(W_dec, "W_dec")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if values.dim() != 2:
        raise ValueError(f"values must have shape [N, k], got {list(values.shape)}")
    if indices.shape != values.shape:
        raise ValueError(f"indices must have the shape of values {list(values.shape)}, "
                         f"got {list(indices.shape)}")
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must have shape [M, d], got {list(W_dec.shape)}")
    if W_dec.shape[0] == 0 or W_dec.shape[1] == 0:
        raise ValueError(f"W_dec is empty: {list(W_dec.shape)}")
    if b_dec is not None:
        check_float(b_dec, "b_dec")
        check_shape(b_dec, "b_dec", (W_dec.shape[1],), f"[d] = [{W_dec.shape[1]}]")
    check_same_device(values, indices=indices, W_dec=W_dec, b_dec=b_dec)
    if indices.numel() > _INT32_MAX:
        raise ValueError(f"indices has {indices.numel()} entries; at most 2**31 - 1 supported "
                         "(split the batch)")
    # One cheap pass over N·k ints (on CUDA this synchronises). Skipped while torch.compile
    # traces (a data-dependent branch); the CPU kernel's backstop still raises ValueError.
    if indices.numel() and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(indices)
        lo, hi, M = int(lo), int(hi), W_dec.shape[0]
        if lo < -1 or hi >= M:
            bad = lo if lo < -1 else hi
            raise ValueError(f"indices must lie in [-1, M) = [-1, {M}) (-1 = empty slot), "
                             f"found {bad}")


def sparse_decode(values, indices, W_dec, b_dec=None, *, backend="auto", deterministic=None):
    """x_hat[n] = Σ_j values[n, j] · W_dec[indices[n, j]] + b_dec   (index -1: empty slot).

    values [N, k], indices [N, k] int32/int64, W_dec [M, d], b_dec [d] -> x_hat [N, d]
    in W_dec's dtype (values are cast to it; accumulation in float32, float64 for float64).
    Differentiable in values, W_dec and b_dec. deterministic (CUDA backward only; CPU is
    always deterministic): None follows torch.are_deterministic_algorithms_enabled().
    Accepts torch tensors, NumPy or CuPy arrays (returns the same kind).
    """
    values, kind = to_torch(values, "values")
    indices = to_torch(indices, "indices")[0]
    W_dec = to_torch(W_dec, "W_dec")[0]
    b_dec = optional_to_torch(b_dec, "b_dec")
    _validate(values, indices, W_dec, b_dec)
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be None or a bool, got {type(deterministic).__name__}")
    path = kernel_path("sparse_decode", values.device, backend)
    if path is None:
        return from_torch(reference.sparse_decode(values, indices, W_dec, b_dec), kind)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (values, W_dec, b_dec))
    if needs_grad or torch.compiler.is_compiling():   # the op traces; the direct call not
        out = torch.ops.actspace.sparse_decode(values, indices, W_dec, b_dec, deterministic, path)
    else:  # inference: straight to the kernel, no dispatcher or autograd bookkeeping
        out = _forward(values, indices, W_dec, b_dec, path)
    return from_torch(out, kind)


# ------------------------------------------------------------------ kernel calls
def _wrows(W):
    """W with unit column stride (rows may be strided) and its row stride."""
    if W.stride(1) != 1 or W.stride(0) < W.shape[1]:
        W = W.contiguous()
    return W, W.stride(0)


def _default_path(path: str, device: torch.device) -> str:
    """The custom ops' `path` argument: '' means our kernel for the tensors' device."""
    return path or (CPU if device.type == "cpu" else CUDA)


def _forward(values, indices, W, b, path):
    """values [N,k], indices [N,k], W [M,d], b [d] or None -> [N, d] in W.dtype.
    path: CPU, CUDA or CUDA_EMULATED (ops._common.kernel_path); None = reference."""
    if path is None or indices.numel() > _INT32_MAX:
        return reference.sparse_decode(values, indices, W, b)
    acc = acc_dtype(W.dtype)
    N, k = values.shape
    M, d = W.shape
    v = values.to(acc).contiguous()
    idx = indices.contiguous()
    W, ldw = _wrows(W)
    bb = None if b is None else b.to(acc).contiguous()
    out = torch.empty((N, d), dtype=W.dtype, device=W.device)
    args = (v.data_ptr(), idx.data_ptr(), dtype_code(idx), W.data_ptr(), ldw, dtype_code(W),
            0 if bb is None else bb.data_ptr(), out.data_ptr(), N, k, M, d)
    c = module_for(path)
    if path != CPU:
        with on_device(path, W.device):
            c.sparse_decode_forward_cuda(*args, stream_handle(W.device))
    else:
        c.sparse_decode_forward(*args)
    return out


# Slots per work item of the deterministic CUDA grad_W: a latent with more is split into
# chunks of this many CSR slots (the longest serial chain of one block), whose partial rows
# a second kernel sums in order. Tests lower it to split small cases.
GRAD_W_CHUNK = 512


class GradWPlan(NamedTuple):
    """The work list of the deterministic CUDA grad_W (csrc/sparse_decode/sparse_decode.h):
    plan int32 [n_items + 2M + n_split] = item_latent | item_first | part_first |
    split_latent; n_items and n_split are bounds (entries past the real ones say M), and
    part_rows bounds the partial rows, so that nothing waits for the GPU to size them."""
    plan: torch.Tensor
    n_items: int
    n_split: int
    part_rows: int
    chunk: int


def grad_W_plan(offsets: torch.Tensor, n_slots: int, chunk: int) -> GradWPlan:
    """Split the CSR (offsets [M+1], n_slots = N*k) into work items of <= chunk slots, with
    torch ops on offsets' device and no host sync (the sizes are bounds known from M, n_slots
    and chunk). Latent m with c_m <= chunk slots: one item writing gW[m]; c_m > chunk:
    ceil(c_m / chunk) items, each with a partial row. Bounds: items <= M + n_slots // chunk;
    split latents <= n_slots // (chunk + 1); partial rows <= n_slots // chunk + that."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    M = offsets.numel() - 1
    dev = offsets.device
    counts = (offsets[1:] - offsets[:-1]).long()                              # [M]
    split = counts > chunk                                                    # [M]
    n_chunks = torch.where(split, (counts + chunk - 1) // chunk, 1)            # [M]
    item_end = torch.cumsum(n_chunks, 0)                                      # [M]
    n_items = M + n_slots // chunk
    # item i belongs to the first latent whose items end after i (M for i past the last)
    item_latent = torch.searchsorted(item_end, torch.arange(n_items, device=dev), right=True)
    part_end = torch.cumsum(torch.where(split, n_chunks, 0), 0)                # [M]
    part_first = torch.where(split, part_end - n_chunks, -1)                  # [M]
    n_split = min(M, n_slots // (chunk + 1))
    split_latent = torch.searchsorted(torch.cumsum(split, 0),
                                      torch.arange(n_split, device=dev), right=True)
    plan = torch.cat([item_latent, item_end - n_chunks, part_first, split_latent]).int()
    return GradWPlan(plan, n_items, n_split, n_slots // chunk + n_split, chunk)


def _backward(grad_out, values, indices, W, need_values, need_W, deterministic, path):
    """-> (grad_values [N,k] in values.dtype or None, grad_W [M,d] in W.dtype or None)."""
    if path is None or indices.numel() > _INT32_MAX:
        gv, gW, _ = _ref_backward(grad_out, values, indices, W)
        return (gv if need_values else None), (gW if need_W else None)
    acc = acc_dtype(W.dtype)
    N, k = values.shape
    M, d = W.shape
    g = grad_out.to(acc).contiguous()
    idx = indices.contiguous()
    W, ldw = _wrows(W)
    dev = W.device
    gv = gW = None
    c = module_for(path)
    if path == CPU:
        if need_W:
            offsets = torch.empty(M + 1, dtype=torch.int32)
            order = torch.empty(max(N * k, 1), dtype=torch.int32)
            c.sparse_decode_build_csr(idx.data_ptr(), dtype_code(idx), N, k, M,
                                      offsets.data_ptr(), order.data_ptr())
            v = values.to(acc).contiguous()
            gW = torch.empty((M, d), dtype=W.dtype)
            # fused pass writes only filled slots: empty ones stay 0
            gv = torch.zeros((N, k), dtype=acc) if need_values else None
            c.sparse_decode_grad_W(g.data_ptr(), v.data_ptr(), offsets.data_ptr(),
                                   order.data_ptr(), k, W.data_ptr(), ldw, dtype_code(W),
                                   gW.data_ptr(), 0 if gv is None else gv.data_ptr(), M, d)
        elif need_values:
            gv = torch.empty((N, k), dtype=acc)
            c.sparse_decode_grad_values(g.data_ptr(), idx.data_ptr(), dtype_code(idx),
                                        W.data_ptr(), ldw, dtype_code(W), gv.data_ptr(),
                                        N, k, M, d)
    else:
        stream = stream_handle(dev)
        with on_device(path, dev):
            if need_values:
                gv = torch.empty((N, k), dtype=acc, device=dev)
                c.sparse_decode_grad_values_cuda(g.data_ptr(), idx.data_ptr(), dtype_code(idx),
                                                 W.data_ptr(), ldw, dtype_code(W),
                                                 gv.data_ptr(), N, k, M, d, stream)
            if need_W:
                v = values.to(acc).contiguous()
                if deterministic or W.dtype != acc:
                    offsets, order = csr_by_latent(idx, M)
                    plan = grad_W_plan(offsets, N * k, GRAD_W_CHUNK)
                    gW = torch.empty((M, d), dtype=W.dtype, device=dev)
                    part = torch.empty((plan.part_rows, d), dtype=acc, device=dev)
                    c.sparse_decode_grad_W_csr_cuda(
                        g.data_ptr(), v.data_ptr(), offsets.data_ptr(), order.data_ptr(), k,
                        plan.plan.data_ptr(), plan.n_items, plan.n_split, plan.chunk,
                        dtype_code(W), gW.data_ptr(), part.data_ptr(), M, d, stream)
                else:
                    gW = torch.zeros((M, d), dtype=W.dtype, device=dev)  # W.dtype == acc
                    c.sparse_decode_grad_W_atomic_cuda(g.data_ptr(), v.data_ptr(),
                                                       idx.data_ptr(), dtype_code(idx),
                                                       dtype_code(gW), gW.data_ptr(),
                                                       N, k, M, d, stream)
    if gv is not None:
        gv = gv.to(values.dtype)
    return gv, gW


# ------------------------------------------------------------------ torch.library ops
@torch.library.custom_op("actspace::sparse_decode", mutates_args=())
def _sparse_decode_op(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
                      b_dec: Optional[torch.Tensor], deterministic: bool,
                      path: str = "") -> torch.Tensor:
    return _forward(values, indices, W_dec, b_dec, _default_path(path, W_dec.device))


@_sparse_decode_op.register_fake
def _(values, indices, W_dec, b_dec, deterministic, path=""):
    return W_dec.new_empty((values.shape[0], W_dec.shape[1]))


@torch.library.custom_op("actspace::sparse_decode_backward", mutates_args=())
def _sparse_decode_backward_op(grad_out: torch.Tensor, values: torch.Tensor,
                               indices: torch.Tensor, W_dec: torch.Tensor, need_values: bool,
                               need_W: bool, deterministic: bool,
                               path: str = "") -> list[torch.Tensor]:
    gv, gW = _backward(grad_out, values, indices, W_dec, need_values, need_W, deterministic,
                       _default_path(path, W_dec.device))
    # custom ops cannot return None: an unneeded gradient comes back as an empty tensor
    return [values.new_empty(0) if gv is None else gv, W_dec.new_empty(0) if gW is None else gW]


@_sparse_decode_backward_op.register_fake
def _(grad_out, values, indices, W_dec, need_values, need_W, deterministic, path=""):
    return [values.new_empty(values.shape if need_values else (0,)),
            W_dec.new_empty(W_dec.shape if need_W else (0,))]


def _setup_context(ctx, inputs, output):
    values, indices, W_dec, b_dec, deterministic, *path = inputs
    ctx.save_for_backward(values, indices, W_dec)
    ctx.deterministic = deterministic
    ctx.path = path[0] if path else ""
    ctx.b_dtype = None if b_dec is None else b_dec.dtype


def _autograd_backward(ctx, grad):
    values, indices, W_dec = ctx.saved_tensors
    need_v, _, need_W, need_b = ctx.needs_input_grad[:4]
    gv = gW = gb = None
    if need_v or need_W:
        gv, gW = torch.ops.actspace.sparse_decode_backward(
            grad, values, indices, W_dec, need_v, need_W, ctx.deterministic, ctx.path)
        gv = gv if need_v else None
        gW = gW if need_W else None
    if need_b:
        gb = grad.sum(0, dtype=acc_dtype(grad.dtype)).to(ctx.b_dtype)
    return (gv, None, gW, gb) + (None,) * (len(ctx.needs_input_grad) - 4)


_sparse_decode_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ internal raw entry points
# No validation, no autograd, torch tensors only: used by backward passes (topk_encode's
# backward is two sparse products: grad_x = decode_forward(g, idx, W_enc) and
# grad_W_enc = decode_backward(x, g, idx, W_enc, need_values=False)). CUDA tensors use our
# kernel only once the family is verified (ops._common.VERIFIED_CUDA).
def _path(device, path):
    return kernel_path("sparse_decode", device, "auto") if path is None else path


def decode_forward(values, indices, W, b=None, *, path=None):
    """values [N,k], indices [N,k] -> Σ_j values[n,j] · W[indices[n,j]] (+ b)  [N, d].
    path: a kernel path (ops._common.kernel_path) or None for the 'auto' choice."""
    path = _path(W.device, path)
    if path is None:
        return reference.sparse_decode(values, indices, W, b)
    # through the registered op, so callers' backward passes stay traceable (opcheck, compile)
    return torch.ops.actspace.sparse_decode(values, indices, W, b, False, path)


def decode_backward(grad_out, values, indices, W, *, need_values=True, need_W=True,
                    deterministic=False, path=None):
    """-> (grad_values [N,k] or None, grad_W [M,d] or None); see reference.sparse_decode."""
    path = _path(W.device, path)
    if path is None:
        return _backward(grad_out, values, indices, W, need_values, need_W, deterministic,
                         None)
    gv, gW = torch.ops.actspace.sparse_decode_backward(grad_out, values, indices, W,
                                                       need_values, need_W, deterministic, path)
    return (gv if need_values else None), (gW if need_W else None)
