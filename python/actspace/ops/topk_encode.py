"""actspace.ops.topk_encode: sparse top-k encoding without the N×M pre-activation.

Tier-0 design: torch's matmul produces the pre-activation one tile at a time
(tile = x_centered[rows] @ W_enc[m0:m1]ᵀ, at most TILE_BYTES = 32 MB) and our kernel merges each
tile into a running top-k per row in one pass (bias, scale, activation, JumpReLU filter,
early reject against the row's k-th value). Memory beyond the inputs and outputs: one
tile (≤ TILE_BYTES; on a GPU two of ≤ CUDA_TILE_BYTES, merged on a side stream while the
next is made), x_centered [N, d] when b_dec is given or a copy is needed, and the
running buffers [N, k]. The op is registered as torch.library custom op
``actspace::topk_encode`` with a fake kernel and a backward through the selected entries
only (never a dense N×M gradient), so it works under autograd and torch.compile.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ._common import (CPU, CUDA, DTYPE_CODES, acc_dtype, as_index, check_float,
                      check_same_device, check_shape, from_torch, kernel_path, module_for,
                      on_device, optional_to_torch, stream_handle, to_torch)

# Upper bound of the pre-activation tile, in bytes. 32 MB fits the last-level cache of
# server CPUs between the matmul that writes it and the merge that reads it, and keeps each
# matmul large: smaller tiles measured slower (per-call packing of W_enc in the CPU BLAS,
# most visible for bfloat16: 4 MB tiles cost 3.8x the bare matmul, 32 MB tiles 1.4x).
TILE_BYTES = 32 << 20
# Rows per tile: a latent tile of W_enc is reused across row blocks while it is in cache.
MAX_TILE_ROWS = 4096
# On a GPU (and the emulated CUDA path) two tiles of at most this size are used in turn: the
# one being merged and the one cuBLAS is writing then stay in L2 together (16 MB of the
# ~50 MB of an H100/H200), and the merge runs on a side stream while the next matmul runs.
CUDA_TILE_BYTES = 8 << 20
# The CUDA merge keeps a row's running top-k in shared memory: k up to this.
CUDA_MAX_K = 256
# Rows per chunk when backward regathers W_enc rows to recompute pre-activations ([c, k, d]).
_GATHER_BYTES = 16 << 20


def _validate(x, W_enc, b_enc, k, b_dec, activation, threshold, scale):
    check_float(x, "x")
    check_float(W_enc, "W_enc")
    if x.dim() != 2:
        raise ValueError(f"x must have shape [N, d], got {list(x.shape)}")
    if W_enc.dim() != 2:
        raise ValueError(f"W_enc must have shape [M, d], got {list(W_enc.shape)}")
    N, d = x.shape
    M = W_enc.shape[0]
    if W_enc.shape[1] != d:
        raise ValueError(f"W_enc must have shape [M, d] with d={d} (the last dim of x), "
                         f"got {list(W_enc.shape)}")
    if N == 0 or d == 0 or M == 0:
        raise ValueError(f"empty input: x is {list(x.shape)}, W_enc is {list(W_enc.shape)}")
    if not 1 <= k <= M:
        raise ValueError(f"k must satisfy 1 <= k <= M={M}, got k={k}")
    if activation not in ("relu", "none"):
        raise ValueError(f"activation must be 'relu' or 'none', got {activation!r}")
    for name, t, shape, what in (("b_enc", b_enc, (M,), "[M]"), ("b_dec", b_dec, (d,), "[d]"),
                                 ("threshold", threshold, (M,), "[M]"),
                                 ("scale", scale, (M,), "[M]")):
        if t is not None:
            check_float(t, name)
            check_shape(t, name, shape, f"{what} = [{shape[0]}]")
    check_same_device(x, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec, threshold=threshold, scale=scale)


def tile_plan(N: int, M: int, elem_size: int, tile_bytes: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the pre-activation tile: rows * cols * elem_size <= tile_bytes."""
    tile_bytes = TILE_BYTES if tile_bytes is None else tile_bytes
    rows = max(1, min(N, MAX_TILE_ROWS, tile_bytes // (elem_size * 64)))
    cols = max(1, min(M, tile_bytes // (elem_size * rows)))
    if cols < M and cols >= 64:
        cols -= cols % 64  # whole SIMD chunks in the CPU merge
    return rows, cols


def _compute_dtype(x, W_enc):
    return torch.promote_types(x.dtype, W_enc.dtype)


_FP32_TILES: dict = {}


def _cuda_fp32_tiles(device, dtype) -> bool:
    """Whether torch.mm(..., out_dtype=float32, out=...) works for `dtype` on this CUDA device
    (a float32 tile keeps bf16/fp16 products at float32 precision); probed once."""
    key = (str(device), dtype)
    if key not in _FP32_TILES:
        try:
            a = torch.zeros(2, 2, dtype=dtype, device=device)
            torch.mm(a, a.T, out_dtype=torch.float32, out=torch.empty(2, 2, device=device))
            _FP32_TILES[key] = True
        except (RuntimeError, TypeError):
            _FP32_TILES[key] = False
    return _FP32_TILES[key]


def _tile_mm(a, b, out, cuda_fp32):
    """out [r, c] = a [r, d] @ b[c, d]ᵀ; on CUDA bf16/fp16 inputs give a float32 tile."""
    if cuda_fp32:
        return torch.mm(a, b.T, out_dtype=torch.float32, out=out)
    return torch.mm(a, b.T, out=out)


def _default_path(path: str, device: torch.device) -> str:
    """The custom op's `path` argument: '' means our kernel for the tensors' device."""
    return path or (CPU if device.type == "cpu" else CUDA)


class _TileRing:
    """Tile buffers used in turn. With streams (a GPU), merges run on a side stream: the
    matmul into one buffer overlaps the merge of the other, and a buffer is written again
    only after the merge that read it finished (events). Without (CPU, emulator), a ring."""

    def __init__(self, nbuf: int, numel: int, dtype, dev, streams: bool):
        self.bufs = [torch.empty(numel, dtype=dtype, device=dev) for _ in range(nbuf)]
        self.count = 0
        self.streams = streams
        if streams:
            self.main = torch.cuda.current_stream(dev)
            self.side = torch.cuda.Stream(dev)
            self.side.wait_stream(self.main)  # running state and biases are ready
            self.free = [None] * nbuf

    def take(self):
        """(slot, buffer) for the next tile; the matmul may write it once this returns."""
        i = self.count % len(self.bufs)
        self.count += 1
        if self.streams and self.free[i] is not None:
            self.main.wait_event(self.free[i])
        return i, self.bufs[i]

    def merge(self, i: int, launch, default_stream: int) -> None:
        """launch(stream) the merge of slot i, after its matmul."""
        if not self.streams:
            launch(default_stream)
            return
        made = torch.cuda.Event()
        made.record(self.main)
        self.side.wait_event(made)
        launch(self.side.cuda_stream)
        self.free[i] = torch.cuda.Event()
        self.free[i].record(self.side)

    def join(self) -> None:
        """The current stream waits for every merge (the finish kernel runs there)."""
        if self.streams:
            self.main.wait_stream(self.side)


def _forward_kernel(x, W_enc, b_enc, k, b_dec, activation, threshold, scale, path):
    """The tiled kernel path. Tensors already validated, all on one device; path is CPU,
    CUDA or CUDA_EMULATED (ops._common.kernel_path)."""
    c = module_for(path)
    N, d = x.shape
    M = W_enc.shape[0]
    dev = x.device
    cdt = _compute_dtype(x, W_enc)
    acc = acc_dtype(cdt)
    # x_centered [N, d]: b_dec is subtracted in the accumulation type, then cast for the matmul.
    if b_dec is not None:
        xc = (x.to(acc) - b_dec.to(acc)).to(cdt).contiguous()
    else:
        xc = x.to(cdt).contiguous()
    W = W_enc.to(cdt).contiguous()
    b_p, s_p, t_p = (None if t is None else t.detach().to(acc).contiguous()
                     for t in (b_enc, scale, threshold))
    if b_p is None:  # the kernel always adds a bias: keeps its inner loop branch-free
        b_p = torch.zeros(M, dtype=acc, device=dev)
    on_cuda = path == CUDA
    cuda_fp32 = (on_cuda and cdt in (torch.bfloat16, torch.float16)
                 and _cuda_fp32_tiles(dev, cdt))
    # CPU float16: a float16 tile overflows beyond 65504 (then every big value is an inf
    # tie) and torch has no float32-output float16 GEMM on CPU, so the operands are
    # widened one column tile at a time and the tile is float32 (CPUs without AMX-FP16
    # run float16 GEMMs at the float32 rate anyway)
    cpu_widen = not on_cuda and cdt == torch.float16
    if cpu_widen:
        xc = xc.float()
    tile_dt = torch.float32 if cuda_fp32 or cpu_widen else cdt
    cuda_kernels = path != CPU  # the CUDA entry points, on a GPU or emulated on the host
    rows, cols = tile_plan(N, M, tile_dt.itemsize,
                           min(TILE_BYTES, CUDA_TILE_BYTES) if cuda_kernels else None)
    run_vals = torch.full((N, k), float("-inf"), dtype=acc, device=dev)
    run_idx = torch.full((N, k), -1, dtype=torch.int32, device=dev)
    tcode, acode = DTYPE_CODES[tile_dt], DTYPE_CODES[acc]
    relu = activation == "relu"
    stream = stream_handle(dev)
    esz = run_vals.element_size()
    # kernels launch on the current device: make it x's (a model split over several GPUs)
    with on_device(path, dev):
        ring = _TileRing(2 if cuda_kernels else 1, rows * cols, tile_dt, dev, on_cuda)
        for m0 in range(0, M, cols):
            m1 = min(M, m0 + cols)
            Wt = W[m0:m1].float() if cpu_widen else W[m0:m1]
            off = [0 if p is None else p.data_ptr() + m0 * esz for p in (b_p, s_p, t_p)]
            for r0 in range(0, N, rows):
                r1 = min(N, r0 + rows)
                slot, buf = ring.take()
                tile = buf[: (r1 - r0) * (m1 - m0)].view(r1 - r0, m1 - m0)
                _tile_mm(xc[r0:r1], Wt, tile, cuda_fp32)
                args = (tile.data_ptr(), tcode, r1 - r0, m1 - m0, m1 - m0, r0, m0, off[0],
                        off[1], off[2], acode, relu, k, run_vals.data_ptr(), run_idx.data_ptr())
                if cuda_kernels:
                    ring.merge(slot, lambda st, a=args: c.topk_encode_merge_cuda(*a, st), stream)
                else:
                    c.topk_encode_merge(*args)
        ring.join()
        values = torch.empty((N, k), dtype=x.dtype, device=dev)
        indices = torch.empty((N, k), dtype=torch.int32, device=dev)
        args = (run_vals.data_ptr(), run_idx.data_ptr(), acode, N, k, values.data_ptr(),
                DTYPE_CODES[x.dtype], indices.data_ptr())
        if cuda_kernels:
            c.topk_encode_finish_cuda(*args, stream)
        else:
            c.topk_encode_finish(*args)
    return values, indices


# ------------------------------------------------------------------ torch.library registration
@torch.library.custom_op("actspace::topk_encode", mutates_args=())
def _topk_encode_op(x: torch.Tensor, W_enc: torch.Tensor, b_enc: Optional[torch.Tensor], k: int,
                    b_dec: Optional[torch.Tensor], activation: str,
                    threshold: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                    path: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    return _forward_kernel(x, W_enc, b_enc, k, b_dec, activation, threshold, scale,
                           _default_path(path, x.device))


@_topk_encode_op.register_fake
def _(x, W_enc, b_enc, k, b_dec, activation, threshold, scale, path=""):
    N = x.shape[0]
    return x.new_empty((N, k)), x.new_empty((N, k), dtype=torch.int32)


def _setup_context(ctx, inputs, output):
    x, W_enc, b_enc, k, b_dec, activation, threshold, scale, *path = inputs
    values, indices = output
    ctx.activation = activation
    ctx.path = _default_path(path[0] if path else "", x.device)
    ctx.has = (b_enc is not None, b_dec is not None, scale is not None)
    ctx.save_for_backward(x, W_enc, b_enc, b_dec, scale, values, indices)


def _preact_unscaled(xc, W, b_enc, idx, acc):
    """u[n, j] = xc[n] · W[idx[n, j]] + b_enc[idx[n, j]], in row chunks ([c, k, d] bounded).

    xc [N, d] (acc), W [M, d], b_enc [M] or None, idx [N, k] int64 (clamped) -> u [N, k]
    """
    N, k = idx.shape
    d = xc.shape[1]
    step = max(1, _GATHER_BYTES // max(1, k * d * xc.element_size()))
    parts = []
    for r0 in range(0, N, step):
        Wg = W[idx[r0:r0 + step]].to(acc)  # [c, k, d]
        parts.append(torch.einsum("nkd,nd->nk", Wg, xc[r0:r0 + step]))
    u = torch.cat(parts)
    if b_enc is not None:
        u = u + b_enc.to(acc)[idx]
    return u


def _backward(ctx, grad_values, grad_indices):
    from .sparse_decode import decode_backward, decode_forward  # noqa: PLC0415

    x, W_enc, b_enc, b_dec, scale, values, indices = ctx.saved_tensors
    need = ctx.needs_input_grad  # x, W_enc, b_enc, k, b_dec, activation, threshold, scale, path
    acc = torch.float64 if torch.float64 in (x.dtype, W_enc.dtype) else torch.float32
    valid = indices >= 0
    idx = indices.long().clamp_min(0)
    gv = torch.where(valid, grad_values.to(acc), torch.zeros((), dtype=acc, device=x.device))
    if ctx.activation == "relu":
        gv = gv * (values > 0)  # relu'(0) = 0, as torch.relu
    g = gv * scale.to(acc)[idx] if scale is not None else gv  # d loss / d (xc·W + b_enc)
    xc = x.to(acc) if b_dec is None else x.to(acc) - b_dec.to(acc)
    grad_x = grad_W = grad_b = grad_bd = grad_s = None
    # No float32 copy of W_enc (2 GB at M=131072, d=4096 in bf16): the decode kernels read
    # W_enc in its own dtype and accumulate in float32. grad_x comes out in W_enc's dtype,
    # which is x's in the usual case; a mixed-precision call (x wider than W_enc) still
    # widens W_enc so that grad_x keeps x's precision.
    W_dec_like = W_enc if W_enc.dtype in (acc, x.dtype) else W_enc.to(acc)
    if need[0] or need[4]:
        gx = decode_forward(g, indices, W_dec_like, path=ctx.path)  # [N, d]
        grad_x = gx.to(x.dtype) if need[0] else None
        grad_bd = (-gx.sum(0, dtype=acc)).to(b_dec.dtype) if need[4] else None
    if need[1]:
        # grad_W [M, d] written in W_enc's dtype by the kernel (float32 sums, one rounding)
        grad_W = decode_backward(xc, g, indices, W_enc, need_values=False,
                                 deterministic=torch.are_deterministic_algorithms_enabled(),
                                 path=ctx.path)[1]
        grad_W = grad_W.to(W_enc.dtype)
    if need[2]:
        grad_b = torch.zeros(W_enc.shape[0], dtype=acc, device=x.device)
        grad_b = grad_b.index_add_(0, idx.reshape(-1), g.reshape(-1)).to(b_enc.dtype)
    if need[7]:
        u = _preact_unscaled(xc, W_enc, b_enc, idx, acc)
        grad_s = torch.zeros(W_enc.shape[0], dtype=acc, device=x.device)
        grad_s = grad_s.index_add_(0, idx.reshape(-1), (gv * u).reshape(-1)).to(scale.dtype)
    return grad_x, grad_W, grad_b, None, grad_bd, None, None, grad_s, None


_topk_encode_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ public entry point
def topk_encode(x, W_enc, b_enc, k, *, b_dec=None, activation="relu", threshold=None,
                scale=None, backend="auto"):
    """values, indices = TopK(act(((x - b_dec) @ W_encᵀ + b_enc) * scale), k).

    x [N, d], W_enc [M, d], b_enc [M] or None, b_dec [d], threshold [M] (JumpReLU), scale [M]
    -> values [N, k] (dtype of x, sorted descending, ties to the lower index),
       indices [N, k] int32 (-1 marks a slot no candidate filled; see actspace.reference).

    torch tensors, NumPy arrays and CuPy arrays are accepted and returned in kind.
    Differentiable in x, W_enc, b_enc, b_dec and scale; not in threshold (a step function:
    JumpReLU training differentiates it with its own straight-through estimator).
    """
    k = as_index(k, "k")
    x, kind = to_torch(x, "x")
    W_enc = to_torch(W_enc, "W_enc")[0]
    b_enc, b_dec = optional_to_torch(b_enc, "b_enc"), optional_to_torch(b_dec, "b_dec")
    threshold, scale = optional_to_torch(threshold, "threshold"), optional_to_torch(scale, "scale")
    _validate(x, W_enc, b_enc, k, b_dec, activation, threshold, scale)
    path = kernel_path("topk_encode", x.device, backend)
    if path not in (None, CPU) and k > CUDA_MAX_K:
        if backend != "auto":
            raise ValueError(f"k must be <= {CUDA_MAX_K} for the CUDA kernel, got k={k} "
                             "(backend='auto' takes the reference path)")
        path = None
    if path is not None:
        tensors = (x, W_enc, b_enc, b_dec, threshold, scale)
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        if grad or torch.compiler.is_compiling():
            values, indices = torch.ops.actspace.topk_encode(x, W_enc, b_enc, k, b_dec,
                                                             activation, threshold, scale, path)
        else:  # direct call: no dispatcher round trip when nothing needs a gradient
            values, indices = _forward_kernel(x, W_enc, b_enc, k, b_dec, activation,
                                              threshold, scale, path)
    else:
        values, indices = reference.topk_encode(x, W_enc, b_enc, k, b_dec=b_dec,
                                                activation=activation, threshold=threshold,
                                                scale=scale)
    return from_torch(values, kind), from_torch(indices, kind)
