"""Tests of actspace.ops.sparse_decode: our kernels against the float64 reference.

Errors are bounded by 2x the error of plain torch at the same precision (the reference
run with that accumulation dtype), plus a float32-epsilon floor so exact ties do not flake.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import actspace as acts
from actspace.ops import _common
from actspace.ops.sparse_decode import decode_backward, decode_forward
from actspace.reference.sparse_decode import sparse_decode as ref_decode
from actspace.reference.sparse_decode import sparse_decode_backward as ref_backward

core = _common.core()
from _cuda_targets import cuda_target  # noqa: F401,E402  (fixture)

pytestmark = pytest.mark.skipif(core is None, reason="needs the compiled extension")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def make(N, k, M, d, dtype=torch.float32, idx_dtype=torch.int64, empty=0.2, seed=0,
         device="cpu", vdtype=None):
    """values [N,k], indices [N,k] (some -1, repeats allowed), W [M,d], b [d]."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, M, (N, k), generator=g)
    idx[torch.rand(N, k, generator=g) < empty] = -1
    v = torch.randn(N, k, generator=g, dtype=torch.float64)
    W = torch.randn(M, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    vd = vdtype or dtype
    return (v.to(device, vd), idx.to(device, idx_dtype), W.to(device, dtype), b.to(device, dtype))


def err(a, b):
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


def bound(torch_err, dtype):
    return 2 * torch_err + (1e-12 if dtype == torch.float64 else 1e-6)


def check_forward(v, idx, W, b, out):
    exact = ref_decode(v.double(), idx, W.double(), None if b is None else b.double())
    plain = ref_decode(v.to(W.dtype), idx, W, b, acc=W.dtype)  # plain torch at W's precision
    assert out.dtype == W.dtype and out.shape == exact.shape
    assert err(out, exact) <= bound(err(plain, exact), W.dtype)


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_reference(dtype, idx_dtype, bias):
    v, idx, W, b = make(37, 7, 53, 77, dtype, idx_dtype)
    idx[3] = 11  # one row whose slots all hit the same latent
    b = b if bias else None
    check_forward(v, idx, W, b, acts.ops.sparse_decode(v, idx, W, b, backend="kernel"))


@pytest.mark.parametrize("N,k,M,d", [(5, 1, 9, 3), (6, 9, 9, 130), (1, 4, 1, 1),
                                     (3, 3, 1000, 1031), (0, 4, 7, 5), (4, 0, 7, 5)])
def test_forward_shapes(N, k, M, d):  # k=1, k=M, M=1, d above one 1024-wide tile, empty N/k
    v, idx, W, b = make(N, k, M, d)
    check_forward(v, idx, W, b, acts.ops.sparse_decode(v, idx, W, b, backend="kernel"))


def test_forward_values_dtype_differs_from_W():
    v, idx, W, b = make(17, 5, 23, 40, torch.bfloat16, vdtype=torch.float32)
    check_forward(v, idx, W, b, acts.ops.sparse_decode(v, idx, W, b))
    check_forward(v, idx, W, None, decode_forward(v, idx, W))


def test_all_empty_slots_give_bias():
    v, idx, W, b = make(4, 3, 5, 6)
    idx.fill_(-1)
    v.fill_(float("nan"))  # values of empty slots are never read
    assert torch.equal(acts.ops.sparse_decode(v, idx, W, b), b.expand(4, 6))


def test_non_contiguous_inputs():
    v, idx, W, b = make(20, 6, 31, 50)
    vt = v.t().contiguous().t()  # column-major values/indices
    it = idx.t().contiguous().t()
    Wbig = torch.randn(31, 64)
    Wbig[:, :50] = W
    Wrows = Wbig[:, :50]  # strided rows, unit column stride: used in place
    Wcols = W.t().contiguous().t()  # column-major: copied
    bb = torch.stack([b, b], 1)[:, 0]
    assert not (vt.is_contiguous() or it.is_contiguous() or Wrows.is_contiguous()
                or bb.is_contiguous())
    for Wx in (Wrows, Wcols):
        check_forward(v, idx, W, b, acts.ops.sparse_decode(vt, it, Wx, bb, backend="kernel"))


def test_raw_kernel_writes_every_output_element():
    v, idx, W, b = make(9, 4, 13, 33)
    for dtype in DTYPES:
        Wd, va = W.to(dtype), v.to(_common.acc_dtype(dtype))  # keep both alive during the call
        out = torch.full((9, 33), float("nan"), dtype=dtype)  # poisoned
        core.sparse_decode_forward(va.data_ptr(), idx.data_ptr(), 5, Wd.data_ptr(), 33,
                                   _common.dtype_code(Wd), 0, out.data_ptr(), 9, 4, 13, 33)
        assert torch.isfinite(out).all()
        check_forward(v, idx, Wd, None, out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_half_bit_pattern_round_trips(dtype):  # subnormals, inf, NaN included
    W = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype).reshape(512, 128)
    idx = torch.arange(512).reshape(512, 1)
    out = acts.ops.sparse_decode(torch.ones(512, 1), idx, W, backend="kernel")  # 1·W[m]
    nan = W.isnan()
    assert torch.equal(out.isnan(), nan) and torch.equal(out[~nan], W[~nan])


# ------------------------------------------------------------------ backward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_backward_matches_reference(dtype, idx_dtype):
    v, idx, W, _ = make(41, 6, 29, 70, dtype, idx_dtype, vdtype=torch.float32)
    g = torch.randn(41, 70, dtype=torch.float64).to(dtype)
    ev, eW, _ = ref_backward(g.double(), v.double(), idx, W.double())
    pv, pW, _ = ref_backward(g, v.to(dtype), idx, W, acc=dtype)  # plain torch, same precision
    for need_v, need_W in [(True, True), (True, False), (False, True)]:
        gv, gW = decode_backward(g, v, idx, W, need_values=need_v, need_W=need_W)
        assert (gv is None) != need_v and (gW is None) != need_W
        if need_v:
            assert gv.dtype == v.dtype and err(gv, ev) <= bound(err(pv, ev), v.dtype) + 1e-5
        if need_W:
            assert gW.dtype == dtype and err(gW, eW) <= bound(err(pW, eW), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_rows_wider_than_one_tile(dtype):  # d spans several 4 KiB accumulator tiles
    v, idx, W, _ = make(5, 3, 4, 2100, dtype)
    g = torch.randn(5, 2100, dtype=dtype)
    ev, eW, _ = ref_backward(g.double(), v.double(), idx, W.double())
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    gv, gW = decode_backward(g, v, idx, W)
    assert err(gv, ev) < tol and err(gW, eW) < tol
    gv, _ = decode_backward(g, v, idx, W, need_W=False)
    assert err(gv, ev) < tol


def test_backward_poisoned_grad_W_and_empty_latents():
    v, idx, W, _ = make(8, 3, 50, 17)  # most latents unused: their rows must be written 0
    g = torch.randn(8, 17)
    offsets = torch.full((51,), -7, dtype=torch.int32)
    order = torch.full((24,), -7, dtype=torch.int32)
    core.sparse_decode_build_csr(idx.data_ptr(), 5, 8, 3, 50, offsets.data_ptr(),
                                 order.data_ptr())
    gW = torch.full((50, 17), float("nan"))
    gv = torch.zeros(8, 3)
    core.sparse_decode_grad_W(g.data_ptr(), v.data_ptr(), offsets.data_ptr(), order.data_ptr(),
                              3, W.data_ptr(), 17, 0, gW.data_ptr(), gv.data_ptr(), 50, 17)
    ev, eW, _ = ref_backward(g.double(), v.double(), idx, W.double())
    assert err(gW, eW) < 1e-5 and err(gv, ev) < 1e-5
    gv_rows = torch.full((8, 3), float("nan"))  # row-major grad_values, poisoned
    core.sparse_decode_grad_values(g.data_ptr(), idx.data_ptr(), 5, W.data_ptr(), 17, 0,
                                   gv_rows.data_ptr(), 8, 3, 50, 17)
    assert err(gv_rows, ev) < 1e-5
    filled = int((idx >= 0).sum())
    assert offsets[-1] == filled and torch.equal(order[:filled].sort().values,
                                                  (idx.reshape(-1) >= 0).nonzero()[:, 0].int())


def test_torch_csr_matches_kernel_csr():  # the CUDA path builds its CSR with torch ops
    from actspace.ops._common import csr_by_latent
    _, idx, _, _ = make(30, 7, 11, 2, seed=5)
    offsets = torch.empty(12, dtype=torch.int32)
    order = torch.empty(210, dtype=torch.int32)
    core.sparse_decode_build_csr(idx.data_ptr(), 5, 30, 7, 11, offsets.data_ptr(),
                                 order.data_ptr())
    t_off, t_order = csr_by_latent(idx, 11)
    filled = int(offsets[-1])
    assert torch.equal(t_off, offsets) and torch.equal(t_order[:filled], order[:filled])


def test_backward_deterministic_bitwise():
    v, idx, W, _ = make(300, 16, 40, 96, seed=3)  # heavy collisions: ~120 slots per latent
    g = torch.randn(300, 96)
    runs = [decode_backward(g, v, idx, W, deterministic=True) for _ in range(3)]
    for gv, gW in runs[1:]:
        assert torch.equal(gv, runs[0][0]) and torch.equal(gW, runs[0][1])
    _, eW, _ = ref_backward(g.double(), v.double(), idx, W.double())
    assert err(runs[0][1], eW) < 1e-4


# ------------------------------------------------------------------ autograd
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_matches_reference(dtype):
    v, idx, W, b = make(25, 5, 19, 33, dtype)
    leaves = [t.clone().requires_grad_() for t in (v, W, b)]
    out = acts.ops.sparse_decode(leaves[0], idx, leaves[1], leaves[2])
    out.backward(torch.ones_like(out))
    ref_leaves = [t.detach().double().requires_grad_() for t in (v, W, b)]
    ref_decode(ref_leaves[0], idx, ref_leaves[1], ref_leaves[2]).sum().backward()
    tol = 1e-4 if dtype == torch.float32 else 0.1
    for a, r in zip(leaves, ref_leaves):
        assert a.grad.dtype == dtype and err(a.grad, r.grad) <= tol * max(1, r.grad.abs().max())
    with torch.no_grad():  # the direct inference path gives the same result
        assert torch.equal(acts.ops.sparse_decode(v, idx, W, b), out)


def test_gradcheck_float64():
    v, idx, W, b = make(6, 4, 7, 5, torch.float64, seed=1)
    idx[0] = 2  # repeated latent
    inputs = [t.clone().requires_grad_() for t in (v, W, b)]
    assert torch.autograd.gradcheck(
        lambda v_, W_, b_: acts.ops.sparse_decode(v_, idx, W_, b_, backend="kernel"), inputs)


def test_opcheck():
    v, idx, W, b = make(6, 3, 9, 10, torch.float32)
    args = (v.requires_grad_(), idx, W.requires_grad_(), b.requires_grad_(), False)
    torch.library.opcheck(torch.ops.actspace.sparse_decode.default, args)
    torch.library.opcheck(torch.ops.actspace.sparse_decode.default,
                          (v.detach(), idx.int(), W.detach(), None, True))


@pytest.mark.slow  # torch.compile tracing takes several seconds
def test_torch_compile_fullgraph():
    v, idx, W, b = make(12, 4, 15, 9, torch.float32)
    Wl = W.clone().requires_grad_()

    def f(v_, W_):
        return (acts.ops.sparse_decode(v_, idx, W_, b, backend="kernel") ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(v, Wl)
    (gW,) = torch.autograd.grad(loss, Wl)
    Wr = W.clone().requires_grad_()
    loss_r = f(v, Wr)
    (gWr,) = torch.autograd.grad(loss_r, Wr)
    assert torch.allclose(loss, loss_r) and torch.allclose(gW, gWr)


def test_torch_compile_fullgraph_inference():
    """No input needs a gradient (inference): the op is still traced, not graph-broken."""
    v, idx, W, b = make(12, 4, 15, 9, torch.float32)
    torch._dynamo.reset()
    f = torch.compile(lambda v_, W_: acts.ops.sparse_decode(v_, idx, W_, b, backend="kernel"),
                      backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        out = f(v, W)
    torch.testing.assert_close(out, acts.reference.sparse_decode(v, idx, W, b))


# ------------------------------------------------------------------ interchange and errors
def test_numpy_in_numpy_out():
    v, idx, W, b = make(7, 3, 11, 6)
    out = acts.ops.sparse_decode(v.numpy(), idx.numpy(), W.numpy(), b.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    check_forward(v, idx, W, b, torch.from_numpy(out))


@pytest.mark.parametrize("case,exc,words", [
    ("values_int", TypeError, "values"), ("indices_float", TypeError, "indices"),
    ("W_int", TypeError, "W_dec"), ("values_1d", ValueError, "values"),
    ("indices_shape", ValueError, "indices"), ("W_3d", ValueError, "W_dec"),
    ("b_shape", ValueError, "b_dec"), ("index_too_big", ValueError, "indices"),
    ("index_below_minus_one", ValueError, "indices"), ("device", ValueError, "W_dec"),
    ("backend", ValueError, "backend"), ("list", TypeError, "values"),
    ("deterministic", TypeError, "deterministic"),
])
def test_bad_inputs_name_the_argument(case, exc, words):
    v, idx, W, b = make(4, 3, 5, 6)
    kw = {}
    if case == "values_int": v = v.long()
    elif case == "indices_float": idx = idx.float()
    elif case == "W_int": W = W.int()
    elif case == "values_1d": v, idx = v[0], idx[0]
    elif case == "indices_shape": idx = idx[:, :2]
    elif case == "W_3d": W = W[None]
    elif case == "b_shape": b = b[:3]
    elif case == "index_too_big": idx[1, 2] = 5
    elif case == "index_below_minus_one": idx[0, 0] = -2
    elif case == "device": W = W.to("meta")
    elif case == "backend": kw["backend"] = "fast"
    elif case == "list": v = v.tolist()
    elif case == "deterministic": kw["deterministic"] = "yes"
    with pytest.raises(exc, match=words):
        acts.ops.sparse_decode(v, idx, W, b, **kw)


def test_kernel_backstop_rejects_bad_index():
    v, idx, W, _ = make(3, 2, 4, 5)
    idx[2, 1] = 4
    out = torch.empty(3, 5)
    with pytest.raises(ValueError, match="outside"):
        core.sparse_decode_forward(v.data_ptr(), idx.data_ptr(), 5, W.data_ptr(), 5, 0, 0,
                                   out.data_ptr(), 3, 2, 4, 5)


def test_hypothesis_shapes():
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=30, deadline=None)
    @hyp.given(N=st.integers(1, 9), k=st.integers(1, 6), M=st.integers(1, 12),
               d=st.integers(1, 40), seed=st.integers(0, 2**16))
    def run(N, k, M, d, seed):
        v, idx, W, b = make(N, k, M, d, seed=seed)
        check_forward(v, idx, W, b, acts.ops.sparse_decode(v, idx, W, b, backend="kernel"))
        gv, gW = decode_backward(W.new_ones(N, d), v, idx, W)
        ev, eW, _ = ref_backward(W.new_ones(N, d).double(), v.double(), idx, W.double())
        assert err(gv, ev) < 1e-4 and err(gW, eW) < 1e-4

    run()


# ------------------------------------------------------------------ CUDA kernels
# On a GPU and on the emulated core (tests/_cuda_targets.py), kernel forced.
def _path(cuda_target):
    return "cuda_emulated" if cuda_target.emulated else "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_cuda_forward_backward(dtype, idx_dtype, cuda_target):
    from actspace.ops.sparse_decode import _backward

    N, k, M, d = (67, 9, 301, 264) if not cuda_target.emulated else (21, 5, 37, 136)
    v, idx, W, b = make(N, k, M, d, dtype, idx_dtype, vdtype=torch.float32)
    idx[:, 0] = 3  # a popular latent: fires on every row
    v, idx, W, b = cuda_target.to(v, idx, W, b)
    with cuda_target.side_stream():  # a non-default stream: kernels must run on it
        out = acts.ops.sparse_decode(v, idx, W, b, backend=cuda_target.backend)
        g = cuda_target.to(torch.randn(N, d)).to(dtype)
        p = _path(cuda_target)
        res = {det: _backward(g, v, idx, W, True, True, det, p) for det in (False, True)}
        again = _backward(g, v, idx, W, True, True, True, p)
    cuda_target.sync()
    check_forward(v.cpu(), idx.cpu(), W.cpu(), b.cpu(), out.cpu())
    ev, eW, _ = ref_backward(g.double(), v.double(), idx, W.double())
    pv, pW, _ = ref_backward(g, v.to(dtype), idx, W, acc=dtype)
    for gv, gW in res.values():
        assert gW.dtype == dtype
        assert err(gv, ev) <= bound(err(pv, ev), torch.float32) + 1e-5
        assert err(gW, eW) <= bound(err(pW, eW), dtype)
    assert torch.equal(again[0], res[True][0]) and torch.equal(again[1], res[True][1])
    if dtype in (torch.bfloat16, torch.float16):  # no atomics (nor an [M, d] float32 buffer)
        assert torch.equal(res[False][1], res[True][1])


@pytest.mark.gpu
def test_cuda_unaligned_rows_and_autograd(cuda_target):
    v, idx, W, b = make(13, 5, 17, 7, torch.float32)  # d=7: scalar path
    v, idx, W, b = cuda_target.to(v, idx, W, b)
    Wl = W.clone().requires_grad_()
    out = acts.ops.sparse_decode(v, idx, Wl, b, backend=cuda_target.backend)
    check_forward(v.cpu(), idx.cpu(), W.cpu(), b.cpu(), out.cpu())
    out.sum().backward()
    _, eW, _ = ref_backward(torch.ones(13, 7, dtype=torch.float64),
                            v.double().cpu(), idx.cpu(), W.double().cpu())
    assert err(Wl.grad, eW) < 1e-5


@pytest.mark.gpu
def test_cuda_poisoned_outputs_are_all_written(cuda_target):
    """Every element of the outputs is written by the kernels (poisoned before the call)."""
    from actspace.ops._common import module_for

    v, idx, W, b = make(9, 4, 23, 40, torch.float32, idx_dtype=torch.int32)
    v, idx, W, b = cuda_target.to(v, idx, W, b)
    c = module_for(_path(cuda_target))
    out = torch.full((9, 40), float("nan"), device=v.device)
    c.sparse_decode_forward_cuda(v.data_ptr(), idx.data_ptr(), 4, W.data_ptr(), 40, 0,
                                 b.data_ptr(), out.data_ptr(), 9, 4, 23, 40, 0)
    cuda_target.sync()
    assert not out.isnan().any()
    check_forward(v.cpu(), idx.cpu(), W.cpu(), b.cpu(), out.cpu())


# ------------------------------------------------------------------ deterministic grad_W split
def _skewed(N, k, M, d, dtype, seed=0):
    """Latent 3 fires on every row, latent 8 on most rows (both split into many chunks when
    the chunk is small), the rest random with empty slots."""
    v, idx, W, _ = make(N, k, M, d, dtype, vdtype=torch.float32, seed=seed)
    idx[:, 0] = 3
    idx[torch.rand(N, generator=torch.Generator().manual_seed(seed)) < 0.8, 1] = 8
    return v, idx, W


def test_grad_W_plan_covers_every_slot_once_within_bounds():
    """The work list (torch ops only): every latent's CSR slots covered by its items in
    order, exactly once; split latents listed in order; partial rows distinct and within
    the bounds the buffers are sized by (items <= M + n/C, partial rows < 2 n/C)."""
    from actspace.ops._common import csr_by_latent
    from actspace.ops.sparse_decode import grad_W_plan

    for seed, (N, k, M, C) in enumerate([(40, 4, 13, 4), (50, 3, 5, 1), (7, 2, 30, 100),
                                         (64, 8, 3, 7), (1, 1, 1, 1), (9, 2, 4, 2)]):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(-1, M, (N, k), generator=g)
        idx[:, 0] = M - 1  # a latent on every row
        offsets, _ = csr_by_latent(idx, M)
        p = grad_W_plan(offsets, N * k, C)
        assert p.n_items <= M + N * k // C and p.part_rows <= 2 * N * k // C + 1
        plan = p.plan.tolist()
        item_latent = plan[:p.n_items]
        item_first = plan[p.n_items:p.n_items + M]
        part_first = plan[p.n_items + M:p.n_items + 2 * M]
        split_latent = plan[p.n_items + 2 * M:]
        off = offsets.tolist()
        counts = [off[m + 1] - off[m] for m in range(M)]
        want_split = [m for m in range(M) if counts[m] > C]
        assert split_latent == want_split + [M] * (p.n_split - len(want_split))
        covered, parts = [], []
        for i, m in enumerate(item_latent):
            if m == M:
                continue
            q = i - item_first[m]
            s0, s1 = off[m] + q * C, min(off[m + 1], off[m] + (q + 1) * C)
            covered += list(range(s0, s1))
            if counts[m] > C:
                assert s0 < s1
                parts.append(part_first[m] + q)
            else:
                assert q == 0 and part_first[m] == -1 and (s0, s1) == (off[m], off[m + 1])
        assert covered == list(range(off[M]))  # every slot once, in CSR order
        assert sorted(parts) == list(range(len(parts))) and len(parts) <= p.part_rows
        assert sorted(set(item_latent) - {M}) == list(range(M))  # every latent has an item


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [72, 7])  # 7: the scalar (unvectorised) path
def test_cuda_grad_W_splits_popular_latents(dtype, d, cuda_target, monkeypatch):
    """A latent on every row split into many chunks (GRAD_W_CHUNK lowered): the gradient
    matches float64 within plain torch's error, and is bitwise the same run to run."""
    import importlib

    from actspace.ops._common import csr_by_latent

    SD = importlib.import_module("actspace.ops.sparse_decode")  # the module, not the op
    N, k, M, chunk = (40, 4, 13, 4) if cuda_target.emulated else (3000, 16, 500, 64)
    v, idx, W = _skewed(N, k, M, d, dtype)
    monkeypatch.setattr(SD, "GRAD_W_CHUNK", chunk)
    plan = SD.grad_W_plan(csr_by_latent(idx, M)[0], N * k, chunk)
    split = plan.plan[plan.n_items + 2 * M:].tolist()
    assert 3 in split and 8 in split  # latent 3: N / chunk chunks
    g = torch.randn(N, d, dtype=torch.float64).to(dtype)
    v, idx, W, gd = cuda_target.to(v, idx, W, g)
    runs = [SD._backward(gd, v, idx, W, False, True, True, _path(cuda_target))[1]
            for _ in range(2)]
    cuda_target.sync()
    _, eW, _ = ref_backward(g.double(), v.double().cpu(), idx.cpu(), W.double().cpu())
    _, pW, _ = ref_backward(g, v.cpu().to(dtype), idx.cpu(), W.cpu(), acc=dtype)
    assert runs[0].dtype == dtype
    assert err(runs[0], eW) <= bound(err(pW, eW), dtype)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.gpu
def test_cuda_grad_W_split_writes_every_row_and_no_stray_partials(cuda_target):
    """Raw entry point with gW and the partial buffer poisoned: every gW element is
    written (empty latents 0), and only the partial rows the plan names are used."""
    from actspace.ops._common import csr_by_latent, module_for
    from actspace.ops.sparse_decode import grad_W_plan

    N, k, M, d, C = 24, 3, 11, 40, 5
    v, idx, W = _skewed(N, k, M, d, torch.float32, seed=4)
    idx[idx == 6] = -1  # latent 6 never fires: a zero row
    g = torch.randn(N, d)
    offsets, order = csr_by_latent(idx, M)
    p = grad_W_plan(offsets, N * k, C)
    gW = torch.full((M, d), float("nan"))
    part = torch.full((p.part_rows + 1, d), float("nan"))  # one row past the bound, unused
    v, gW, part, g, offsets, order, plan = cuda_target.to(v, gW, part, g, offsets, order,
                                                          p.plan)
    module_for(_path(cuda_target)).sparse_decode_grad_W_csr_cuda(
        g.data_ptr(), v.data_ptr(), offsets.data_ptr(), order.data_ptr(), k, plan.data_ptr(),
        p.n_items, p.n_split, C, 0, gW.data_ptr(), part.data_ptr(), M, d, 0)
    cuda_target.sync()
    gW, part = gW.cpu(), part.cpu()
    _, eW, _ = ref_backward(g.double().cpu(), v.double().cpu(), idx, W.double())
    assert not gW.isnan().any() and err(gW, eW) < 1e-5 and (gW[6] == 0).all()
    assert part[-1].isnan().all()
