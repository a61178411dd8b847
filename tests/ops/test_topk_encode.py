"""topk_encode kernels against the float64 reference (actspace.reference.topk_encode).

Exact semantics (index order, ties, NaN, options) are checked in float64, where the kernel
computes in float64 too; reduced precisions are checked as index sets plus the k-th value
with a tolerance of twice plain torch's error at that precision.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from actspace import reference
from actspace.ops import topk_encode
from actspace.ops._common import core

T = importlib.import_module("actspace.ops.topk_encode")  # the module (ops exports the function)

from _cuda_targets import cuda_target  # noqa: F401,E402  (fixture)

pytestmark = pytest.mark.skipif(core() is None, reason="needs the compiled extension")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make(N, d, M, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    W = torch.randn(M, d, generator=g, dtype=torch.float64) / d ** 0.5
    b = torch.randn(M, generator=g, dtype=torch.float64) * 0.5
    return [t.to(dtype=dtype, device=device) for t in (x, W, b)]


@pytest.fixture
def small_tiles(monkeypatch):
    """Force many latent tiles and row blocks on small inputs."""
    monkeypatch.setattr(T, "TILE_BYTES", 8 * 64 * 8)
    monkeypatch.setattr(T, "MAX_TILE_ROWS", 8)


def assert_exact(got, want):
    (v, i), (rv, ri) = got, want
    assert v.dtype == rv.dtype and i.dtype == torch.int32 and v.shape == rv.shape
    torch.testing.assert_close(i, ri, rtol=0, atol=0)
    torch.testing.assert_close(v, rv, rtol=1e-12, atol=1e-12, equal_nan=True)


# ------------------------------------------------------------------ exact semantics (float64)
@pytest.mark.parametrize("N,d,M,k", [(1, 1, 1, 1), (7, 13, 37, 1), (19, 5, 37, 37),
                                     (33, 17, 301, 9), (65, 31, 130, 64)])
@pytest.mark.parametrize("tiles", ["default", "small"])
def test_matches_reference_float64(N, d, M, k, tiles, request):
    if tiles == "small":
        request.getfixturevalue("small_tiles")
    x, W, b = make(N, d, M, seed=N + M)
    assert_exact(topk_encode(x, W, b, k, backend="kernel"), reference.topk_encode(x, W, b, k))


@pytest.mark.parametrize("activation", ["relu", "none"])
def test_options_threshold_scale_bdec(activation, small_tiles):
    N, d, M, k = 23, 11, 97, 12
    x, W, b = make(N, d, M, seed=3)
    g = torch.Generator().manual_seed(4)
    b_dec = torch.randn(d, generator=g, dtype=torch.float64)
    scale = torch.rand(M, generator=g, dtype=torch.float64) + 0.5
    thr = torch.rand(M, generator=g, dtype=torch.float64)
    for kw in ({"b_dec": b_dec}, {"scale": scale}, {"threshold": thr},
               {"b_dec": b_dec, "scale": scale, "threshold": thr}):
        got = topk_encode(x, W, b, k, activation=activation, backend="kernel", **kw)
        assert_exact(got, reference.topk_encode(x, W, b, k, activation=activation, **kw))
    # a JumpReLU threshold that leaves most rows short of k candidates: -1 / 0 padding
    got = topk_encode(x, W, b, k, threshold=thr + 1.5, backend="kernel")
    assert (got[1] == -1).any()
    assert_exact(got, reference.topk_encode(x, W, b, k, threshold=thr + 1.5))


def test_no_bias_and_activation_none_negative_values():
    x, W, _ = make(9, 6, 40, seed=5)
    got = topk_encode(x, W, None, 40, activation="none", backend="kernel")
    assert (got[0] < 0).any() and (got[1] >= 0).all()
    assert_exact(got, reference.topk_encode(x, W, None, 40, activation="none"))


@pytest.mark.parametrize("k", [1, 5, 30])
def test_ties_go_to_lower_index(k, small_tiles):
    N, d, M = 6, 8, 150
    x, W, b = make(N, d, M, seed=6)
    tied = torch.tensor([3, 17, 64, 65, 100, 149, 70, 8])  # spread across tiles
    W[tied] = 0.0
    b[tied] = 50.0  # exactly equal, and above every other pre-activation
    v, i = topk_encode(x, W, b, k, backend="kernel")
    want = torch.sort(tied).values[:k]
    for row in range(N):
        assert i[row, :min(k, 8)].tolist() == want[:min(k, 8)].tolist()
    assert_exact((v, i), reference.topk_encode(x, W, b, k))
    # relu ties at zero: rows with few positive pre-activations fill with 0 at low indices
    x2, W2, b2 = make(4, 3, 50, seed=7)
    b2 -= 3.0
    assert_exact(topk_encode(x2, W2, b2, 20, backend="kernel"),
                 reference.topk_encode(x2, W2, b2, 20))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signed_zero_ties(dtype):
    """-0.0 and +0.0 are equal pre-activations: the lower index wins either way."""
    M = 40
    W = torch.zeros(M, 3, dtype=dtype)
    b = torch.where(torch.arange(M) % 2 == 0, torch.tensor(-0.0, dtype=dtype),
                    torch.tensor(0.0, dtype=dtype))
    b[30:] = -1.0
    x = torch.randn(4, 3, dtype=dtype)
    for act in ("relu", "none"):
        v, i = topk_encode(x, W, b, 25, activation=act, backend="kernel")
        rv, ri = reference.topk_encode(x, W, b, 25, activation=act)
        assert i[0].tolist() == list(range(25))  # relu: all 40 tie at 0; none: 30 tie
        torch.testing.assert_close(i, ri, rtol=0, atol=0)
        torch.testing.assert_close(v, rv, rtol=0, atol=0)


def test_nan_and_inf_rows():
    N, d, M, k = 8, 7, 45, 6
    x, W, b = make(N, d, M, seed=8)
    x[1, 2] = float("nan")  # whole row NaN: nothing selected
    x[2, 0] = float("inf")  # +-inf / NaN pre-activations mixed
    x[3, 4] = float("-inf")
    W[5, :] = float("nan")  # one NaN latent for every row
    v, i = topk_encode(x, W, b, k, backend="kernel")
    assert (i[1] == -1).all() and (v[1] == 0).all()
    assert not (i == 5).any()
    assert not torch.isnan(v).any()
    assert_exact((v, i), reference.topk_encode(x, W, b, k))
    assert_exact(topk_encode(x, W, b, k, activation="none", backend="kernel"),
                 reference.topk_encode(x, W, b, k, activation="none"))


def test_non_contiguous_inputs():
    N, d, M, k = 10, 9, 60, 7
    x, W, b = make(N, d, M, seed=9)
    xs = torch.zeros(N, 2 * d, dtype=x.dtype)
    xs[:, ::2] = x
    Wt = W.T.contiguous().T  # transposed storage
    bs = torch.zeros(2 * M, dtype=b.dtype)
    bs[::2] = b
    assert not xs[:, ::2].is_contiguous() and not Wt.is_contiguous()
    got = topk_encode(xs[:, ::2], Wt, bs[::2], k, backend="kernel")
    assert_exact(got, reference.topk_encode(x, W, b, k))


# ------------------------------------------------------------------ reduced precision
def check_close_topk(got, x, W, b, k, dtype, **kw):
    """Index sets + k-th value within 2x plain torch's error at `dtype`."""
    v, i = got
    exact = reference.topk_preactivation(x.double(), W.double(), b.double(), **kw)
    exact = torch.relu(exact)
    plain = torch.relu(torch.addmm(b.to(dtype), x.to(dtype), W.to(dtype).T)).double()
    tol = 2 * (plain - exact).abs().max().item() + 1e-6
    kth = exact.topk(k, dim=1).values[:, -1]
    assert v.dtype == dtype and (i >= 0).all()
    sel = torch.gather(exact, 1, i.long())
    assert (sel >= kth[:, None] - tol).all(), "selected a latent clearly below the k-th"
    assert (v.double() - sel).abs().max().item() <= tol
    assert (v.double()[:, -1] - kth).abs().max().item() <= tol
    assert (v[:, :-1] >= v[:, 1:]).all(), "not sorted descending"
    assert all(len(set(r)) == k for r in i.tolist()), "duplicate indices"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 16])
def test_reduced_precision(dtype, k, small_tiles):
    x, W, b = make(41, 96, 257, seed=10)
    b = b + 2.0  # mostly positive, so relu keeps at least k candidates per row
    got = topk_encode(x.to(dtype), W.to(dtype), b.to(dtype), k, backend="kernel")
    check_close_topk(got, x.to(dtype), W.to(dtype), b.to(dtype), k, dtype)


# ------------------------------------------------------------------ raw kernels
def test_finish_writes_every_output_element():
    """Poisoned output buffers: every element must be overwritten, padding included."""
    c = core()
    N, k, M = 5, 4, 12
    tile = torch.randn(N, M)
    tile[2] = -1.0  # relu -> zeros: candidates, value 0
    tile[3] = float("nan")  # no candidate: -1 / 0 padding
    b = torch.zeros(M)
    rv = torch.full((N, k), float("-inf"))
    ri = torch.full((N, k), -1, dtype=torch.int32)
    c.topk_encode_merge(tile.data_ptr(), 0, N, M, M, 0, 0, b.data_ptr(), 0, 0, 0, True, k,
                        rv.data_ptr(), ri.data_ptr())
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        ov = torch.full((N, k), 12345.0, dtype=dtype)
        oi = torch.full((N, k), 777, dtype=torch.int32)
        c.topk_encode_finish(rv.data_ptr(), ri.data_ptr(), 0, N, k, ov.data_ptr(),
                             T.DTYPE_CODES[dtype], oi.data_ptr())
        want_v, want_i = reference.topk_encode(tile.double(), torch.eye(M, dtype=torch.float64),
                                               None, k)
        assert (oi != 777).all() and (ov != 12345.0).all()
        torch.testing.assert_close(oi, want_i, rtol=0, atol=0)
        torch.testing.assert_close(ov.double(), want_v, rtol=1e-2, atol=0)
        assert (oi[3] == -1).all() and (ov[3] == 0).all()


def test_workspace_bounded(monkeypatch):
    """Each tile the matmul writes stays under TILE_BYTES; never an N×M buffer."""
    monkeypatch.setattr(T, "TILE_BYTES", 4096)
    sizes = []
    real = T._tile_mm

    def spy(a, b, out, cuda_fp32):
        sizes.append(out.numel() * out.element_size())
        return real(a, b, out, cuda_fp32)

    monkeypatch.setattr(T, "_tile_mm", spy)
    x, W, b = make(50, 8, 300, dtype=torch.float32, seed=11)
    topk_encode(x, W, b, 5, backend="kernel")
    assert len(sizes) > 1 and max(sizes) <= 4096 < 50 * 300 * 4
    for N, M, esz, cap in [(4096, 65536, 4, 16 << 20), (1, 10 ** 6, 2, 1 << 20),
                           (10 ** 6, 3, 8, 4096),
                           (8192, 131072, 4, 32 << 20), (5, 7, 4, 8)]:
        rows, cols = T.tile_plan(N, M, esz, cap)
        assert 1 <= rows <= N and 1 <= cols <= M
        assert rows * cols * esz <= max(cap, esz), (N, M, esz, cap)


# ------------------------------------------------------------------ autograd and registration
@pytest.mark.parametrize("activation", ["relu", "none"])
def test_gradcheck(activation):
    x, W, b = make(6, 5, 23, seed=12)
    g = torch.Generator().manual_seed(13)
    b_dec = torch.randn(5, generator=g, dtype=torch.float64)
    scale = torch.rand(23, generator=g, dtype=torch.float64) + 0.5
    ins = [t.clone().requires_grad_() for t in (x, W, b, b_dec, scale)]

    def f(x, W, b, b_dec, scale):
        v, _ = topk_encode(x, W, b, 4, b_dec=b_dec, scale=scale, activation=activation,
                           backend="kernel")
        return v

    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6)
    # and the gradients equal those of the (dense) reference
    v = f(*ins)
    w = torch.randn(v.shape, dtype=torch.float64, generator=g)
    ours = torch.autograd.grad((v * w).sum(), ins)
    rv, _ = reference.topk_encode(*ins[:3], 4, b_dec=ins[3], scale=ins[4], activation=activation)
    theirs = torch.autograd.grad((rv * w).sum(), ins)
    for a, r in zip(ours, theirs):
        torch.testing.assert_close(a, r)


def test_backward_reads_W_enc_in_its_dtype(monkeypatch):
    """The backward never makes a float32 copy of a bf16 W_enc ([M, d], 2 GB at the reference
    shape): both sparse products receive W_enc itself, and the gradients stay close to the
    float64 ones."""
    SD = importlib.import_module("actspace.ops.sparse_decode")

    seen = []
    for name in ("decode_forward", "decode_backward"):
        real = getattr(SD, name)

        def spy(*a, _real=real, **kw):
            seen.append(a[3] if len(a) > 3 else a[2])  # the W argument
            return _real(*a, **kw)

        monkeypatch.setattr(SD, name, spy)
    x, W, b = make(6, 32, 50, seed=33)
    xb, Wb, bb = (t.to(torch.bfloat16).requires_grad_() for t in (x, W, b))
    v, _ = topk_encode(xb, Wb, bb, 4, backend="kernel")
    v.float().square().sum().backward()
    assert seen and all(w.dtype == torch.bfloat16 and w.data_ptr() == Wb.data_ptr()
                        for w in seen)
    x64, W64, b64 = (t.detach().double().requires_grad_() for t in (xb, Wb, bb))
    v64, _ = topk_encode(x64, W64, b64, 4, backend="reference")
    v64.square().sum().backward()
    for got, want in ((xb.grad, x64.grad), (Wb.grad, W64.grad)):
        assert (got.double() - want).abs().max() <= 0.02 * want.abs().max() + 1e-3


def test_gradcheck_threshold_and_no_bias():
    x, W, _ = make(5, 4, 19, seed=14)
    thr = torch.full((19,), 0.1, dtype=torch.float64)
    ins = [t.clone().requires_grad_() for t in (x, W)]
    assert torch.autograd.gradcheck(
        lambda x, W: topk_encode(x, W, None, 6, threshold=thr, backend="kernel")[0], ins,
        eps=1e-6, atol=1e-6)


def test_opcheck():
    x, W, b = make(7, 6, 29, seed=15)
    x32, W32, b32 = x.float(), W.float(), b.float()
    scale = torch.rand(29) + 0.5
    for args in [(x32, W32, b32, 5, None, "relu", None, None),
                 (x32.requires_grad_(), W32.requires_grad_(), b32, 3, torch.randn(6), "none",
                  torch.zeros(29), scale),
                 (x.requires_grad_(), W, b, 4, None, "relu", None, scale.double())]:
        torch.library.opcheck(torch.ops.actspace.topk_encode.default, args)


@pytest.mark.slow
def test_torch_compile_forward_and_backward():
    x, W, b = make(10, 6, 50, dtype=torch.float32, seed=18)

    def loss(x, W, b):
        v, i = topk_encode(x, W, b, 5, backend="kernel")
        return (v * v).sum(), i

    W1 = W.clone().requires_grad_()
    l1, i1 = torch.compile(loss, backend="aot_eager", fullgraph=True)(x, W1, b)
    l1.backward()
    W2 = W.clone().requires_grad_()
    l2, i2 = loss(x, W2, b)
    l2.backward()
    torch.testing.assert_close(i1, i2, rtol=0, atol=0)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(W1.grad, W2.grad)


def test_torch_compile_in_a_fresh_process():
    """The first op call happens while Dynamo traces (nothing loaded the core eagerly
    before, as this test module's skipif does): it must still compile, fullgraph."""
    import subprocess
    import sys
    code = (
        "import torch, actspace\n"
        "x, W = torch.randn(6, 5), torch.randn(40, 5)\n"
        "f = torch.compile(lambda x, W: actspace.ops.topk_encode(x, W, None, 3),\n"
        "                  backend='aot_eager', fullgraph=True)\n"
        "v, i = f(x, W)\n"
        "r = actspace.reference.topk_encode(x, W, None, 3)\n"
        "assert torch.equal(i, r[1]), (i, r[1])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def test_fast_path_and_op_agree():
    x, W, b = make(12, 8, 70, dtype=torch.float32, seed=16)
    v1, i1 = topk_encode(x, W, b, 9, backend="kernel")
    v2, i2 = topk_encode(x, W.requires_grad_(), b, 9, backend="kernel")
    assert v2.requires_grad and not v1.requires_grad
    torch.testing.assert_close(i1, i2, rtol=0, atol=0)
    torch.testing.assert_close(v1, v2.detach(), rtol=0, atol=0)


# ------------------------------------------------------------------ interchange and validation
def test_numpy_in_numpy_out():
    x, W, b = make(9, 4, 21, dtype=torch.float32, seed=17)
    v, i = topk_encode(x.numpy(), W.numpy(), b.numpy(), 3)
    assert isinstance(v, np.ndarray) and v.dtype == np.float32 and i.dtype == np.int32
    rv, ri = reference.topk_encode(x, W, b, 3)
    np.testing.assert_array_equal(i, ri.numpy())
    np.testing.assert_allclose(v, rv.numpy(), rtol=1e-6)


def test_numpy_views_byte_orders_and_read_only_arrays():
    x, W, b = (t.numpy() for t in make(9, 4, 21, dtype=torch.float32, seed=19))
    want = reference.topk_encode(*(torch.from_numpy(a) for a in (x, W, b)), 3)
    xr = np.ascontiguousarray(x[:, ::-1])[:, ::-1]        # negative column stride
    Wb = W.astype(W.dtype.newbyteorder(">"))               # big-endian
    br = b.copy()
    br.setflags(write=False)                               # read-only
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # no "not writable" warning
        v, i = topk_encode(xr, Wb, br, 3)
    np.testing.assert_array_equal(i, want[1].numpy())
    np.testing.assert_allclose(v, want[0].numpy(), rtol=1e-6)
    with pytest.raises(TypeError, match="x must be a plain numpy.ndarray"):
        topk_encode(np.ma.masked_array(x), W, b, 3)
    v, i = topk_encode(x, W, b, np.int64(3))               # NumPy integer k
    np.testing.assert_array_equal(i, want[1].numpy())


def test_float16_beyond_its_range_keeps_the_order():
    """float16 products above 65504 overflow a float16 tile; the CPU kernel widens to
    float32 tiles, so the selection equals the float32 reference on the same inputs."""
    x, W, b = make(16, 8, 90, dtype=torch.float32, seed=20)
    x, W = (x * 300).half(), (W * 300).half()               # |x·w| up to ~1e5
    v, i = topk_encode(x, W, b.half(), 6, backend="kernel", activation="none")
    rv, ri = reference.topk_encode(x, W, b.half(), 6, activation="none")  # float32 math
    assert torch.equal(i, ri) and bool((i >= 0).all())
    torch.testing.assert_close(v, rv, rtol=2e-3, atol=0)


def test_reference_promotes_to_float64_like_the_kernel():
    x, W, b = make(7, 5, 30, dtype=torch.float64, seed=21)
    got = topk_encode(x.float(), W, b, 4, backend="kernel")
    want = reference.topk_encode(x.float(), W, b, 4)
    assert_exact(got, want)


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"x": torch.ones(3, 4, dtype=torch.int64)}, TypeError, "x"),
    ({"W_enc": torch.ones(10, 4, device="meta")}, ValueError, "W_enc"),
    ({"threshold": torch.ones(9)}, ValueError, "threshold"),
    ({"x": torch.ones(3, 4, 1)}, ValueError, "x"),
    ({"W_enc": torch.ones(10, 5)}, ValueError, "W_enc"),
    ({"W_enc": torch.ones(10, 4, dtype=torch.int32)}, TypeError, "W_enc"),
    ({"x": [[1.0] * 4]}, TypeError, "x"),
    ({"b_enc": torch.ones(9)}, ValueError, "b_enc"),
    ({"k": 11}, ValueError, "k"),
    ({"k": 0}, ValueError, "k"),
    ({"k": 2.0}, TypeError, "k"),
    ({"k": True}, TypeError, "k"),
    ({"b_dec": torch.ones(5)}, ValueError, "b_dec"),
    ({"threshold": torch.ones(10, dtype=torch.int32)}, TypeError, "threshold"),
    ({"scale": torch.ones(3)}, ValueError, "scale"),
    ({"activation": "gelu"}, ValueError, "activation"),
    ({"backend": "fast"}, ValueError, "backend"),
    ({"x": torch.ones(0, 4)}, ValueError, "empty"),
])
def test_bad_inputs(kwargs, exc, name):
    args = {"x": torch.ones(3, 4), "W_enc": torch.ones(10, 4), "b_enc": torch.ones(10), "k": 2}
    args.update(kwargs)
    x, W, b, k = (args.pop(n) for n in ("x", "W_enc", "b_enc", "k"))
    with pytest.raises(exc, match=name):
        topk_encode(x, W, b, k, **args)


# ------------------------------------------------------------------ property test
def test_property_shapes_float64():
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=25, deadline=None)
    @hyp.given(N=st.integers(1, 20), d=st.integers(1, 12), M=st.integers(1, 90),
               kf=st.floats(0, 1), tile=st.sampled_from([64, 512, 1 << 20]),
               seed=st.integers(0, 10 ** 6))
    def prop(N, d, M, kf, tile, seed):
        k = max(1, round(kf * M))
        x, W, b = make(N, d, M, seed=seed)
        old = T.TILE_BYTES
        T.TILE_BYTES = tile
        try:
            got = topk_encode(x, W, b, k, backend="kernel")
        finally:
            T.TILE_BYTES = old
        assert_exact(got, reference.topk_encode(x, W, b, k))

    prop()


# ------------------------------------------------------------------ CUDA kernels
# On a GPU and on the emulated core (tests/_cuda_targets.py); the emulator runs every block's
# threads as OS threads, so its shapes are small (still non-power-of-two, a partial block).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("k", [1, 64, 256])
def test_cuda_matches_reference(dtype, k, cuda_target):
    N, d, M = (300, 128, 1000) if not cuda_target.emulated else (11, 20, 264 if k < 256 else 300)
    x, W, b = make(N, d, M, seed=20 + k)
    b = b + 2.0
    x[7] = float("nan")
    hi = M - 100
    W[11] = 0.0
    W[hi] = 0.0
    b[11] = b[hi] = 40.0  # a planted tie above everything: 11 must come before hi
    xs, Ws, bs = cuda_target.to(x, W, b, dtype=dtype)
    with cuda_target.side_stream():
        v, i = topk_encode(xs, Ws, bs, k, backend=cuda_target.backend)
    cuda_target.sync()
    v, i = v.cpu(), i.cpu()
    assert (i[7] == -1).all() and (v[7] == 0).all()
    rows = [r for r in range(N) if r != 7]
    assert (i[rows, 0] == 11).all() and (k == 1 or (i[rows, 1] == hi).all())
    if dtype == torch.float64:
        assert_exact((v, i), reference.topk_encode(x, W, b, k))
    else:
        check_close_topk((v[rows], i[rows]), x[rows].to(dtype), W.to(dtype), b.to(dtype), k,
                         dtype)


def test_cuda_options(cuda_target, small_tiles):
    x, W, b = make(13 if cuda_target.emulated else 40, 16, 333, seed=30)
    g = torch.Generator().manual_seed(31)
    b_dec = torch.randn(16, generator=g, dtype=torch.float64)
    scale = torch.rand(333, generator=g, dtype=torch.float64) + 0.5
    thr = torch.rand(333, generator=g, dtype=torch.float64)
    for act in ("relu", "none"):
        got = topk_encode(*cuda_target.to(x, W, b), 17, b_dec=cuda_target.to(b_dec),
                          scale=cuda_target.to(scale), threshold=cuda_target.to(thr),
                          activation=act, backend=cuda_target.backend)
        want = reference.topk_encode(x, W, b, 17, b_dec=b_dec, scale=scale, threshold=thr,
                                     activation=act)
        assert_exact(tuple(t.cpu() for t in got), want)


def test_cuda_grad(cuda_target):
    x, W, b = make(5, 16, 40, seed=30)
    ins = [t.requires_grad_() for t in cuda_target.to(x, W, b)]
    # fast mode (random projections) on the emulator: a full numerical Jacobian is ~1500
    # forward launches, minutes under the sanitizers
    assert torch.autograd.gradcheck(
        lambda x, W, b: topk_encode(x, W, b, 3, backend=cuda_target.backend)[0], ins, eps=1e-6,
        atol=1e-6, fast_mode=cuda_target.emulated)


def test_cuda_unaligned_tiles_take_the_scalar_loads(cuda_target):
    """A tile whose rows are not 16-byte aligned (odd M in one tile) and an aligned one give
    the same result: the vector-load and scalar merges agree, ties and tails included."""
    x, W, b = make(9, 8, 61, seed=32)
    W[3] = W[40] = 0.0
    b[3] = b[40] = 9.0
    want = reference.topk_encode(x, W, b, 5)
    got = topk_encode(*cuda_target.to(x, W, b, dtype=torch.float32), 5,
                      backend=cuda_target.backend)
    assert torch.equal(got[1].cpu(), want[1])
    got64 = topk_encode(*cuda_target.to(x, W[:60], b[:60]), 5, backend=cuda_target.backend)
    assert_exact(tuple(t.cpu() for t in got64), reference.topk_encode(x, W[:60], b[:60], 5))


def test_cuda_two_tiles_in_turn(cuda_target, monkeypatch):
    """The CUDA path writes two tile buffers in turn (on a GPU: one merged on the side stream
    while the next matmul fills the other) and each stays under CUDA_TILE_BYTES."""
    monkeypatch.setattr(T, "CUDA_TILE_BYTES", 8 * 64 * 8)
    outs = []
    real = T._tile_mm

    def spy(a, b, out, cuda_fp32):
        outs.append((out.data_ptr(), out.numel() * out.element_size()))
        return real(a, b, out, cuda_fp32)

    monkeypatch.setattr(T, "_tile_mm", spy)
    x, W, b = make(20, 8, 200, seed=34)
    got = topk_encode(*cuda_target.to(x, W, b), 6, backend=cuda_target.backend)
    assert_exact(tuple(t.cpu() for t in got), reference.topk_encode(x, W, b, 6))
    assert len(outs) > 4 and all(n <= 8 * 64 * 8 for _, n in outs)
    bases = [p for p, _ in outs]
    assert len(set(bases)) == 2 and all(u != v for u, v in zip(bases, bases[1:]))


def test_cuda_bad_running_state_dtype_is_named(cuda_target):
    c = T.module_for("cuda_emulated" if cuda_target.emulated else "cuda")
    tile = cuda_target.to(torch.zeros(2, 4))
    b = cuda_target.to(torch.zeros(4))
    rv = cuda_target.to(torch.full((2, 2), float("-inf"), dtype=torch.float64))
    ri = cuda_target.to(torch.full((2, 2), -1, dtype=torch.int32))
    with pytest.raises(ValueError, match="float32 tile needs a float32 running state"):
        c.topk_encode_merge_cuda(tile.data_ptr(), 0, 2, 4, 4, 0, 0, b.data_ptr(), 0, 0, 3, True,
                                 2, rv.data_ptr(), ri.data_ptr(), 0)


@cuda
@pytest.mark.skipif(not core() or not core().build_info()["cuda"], reason="needs a CUDA device")
def test_cuda_cupy_in_cupy_out_and_other_device():
    """CuPy arrays in and out (zero-copy through DLPack), and x on a device that is not
    the current one (the launches must follow x, not the current device)."""
    x, W, b = make(50, 24, 400, seed=40)
    want = reference.topk_encode(x, W, b, 9)
    cp = pytest.importorskip("cupy")
    v, i = topk_encode(*(cp.asarray(t.numpy()) for t in (x, W, b)), 9, backend="kernel")
    assert isinstance(v, cp.ndarray) and isinstance(i, cp.ndarray)
    assert_exact((torch.from_numpy(cp.asnumpy(v)), torch.from_numpy(cp.asnumpy(i))), want)
    if torch.cuda.device_count() > 1:
        last = torch.device("cuda", torch.cuda.device_count() - 1)
        got = topk_encode(*(t.to(last) for t in (x, W, b)), 9, backend="kernel")
        assert got[0].device == last
        assert_exact(tuple(t.cpu() for t in got), want)
