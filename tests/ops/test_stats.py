"""Tests of the stats kernels (actspace.ops.stats) against the float64 reference
(actspace.reference.stats): moments of every dtype with outliers, large means, non-finite
values, zeros and row-strided input; Chan merges of any split; latent statistics with ties,
several batches and edge values; named errors on bad input; the CUDA kernels on a GPU."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actspace.ops import stats as S
from actspace.ops._common import core
from actspace.reference import stats as R

from _cuda_targets import cuda_target  # noqa: F401,E402  (fixture)

pytestmark = pytest.mark.skipif(core() is None, reason="compiled extension not built")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _data(N, d, dtype, seed, mean=0.0, nonfinite=True):
    """x [N, d] of dtype: normal with channel scales, a large mean, outliers, zeros, NaN/Inf."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.1
    x = torch.randn(N, d, generator=g, dtype=torch.float64) * scale + mean
    x[torch.rand(N, d, generator=g) < 0.01] *= 50             # planted outliers
    x[torch.rand(N, d, generator=g) < 0.02] = 0               # zeros are counted
    if nonfinite and N * d > 8:
        flat = x.view(-1)
        pos = torch.randperm(N * d, generator=g)[:6]
        flat[pos[:2]] = float("nan")
        flat[pos[2:4]] = float("inf")
        flat[pos[4:]] = float("-inf")
    return x.to(dtype)


def _assert_moments_close(got, want, tol=1e-10):
    """Float64 agreement, scaled per field so that near-zero M3 is judged fairly."""
    for key in ("count", "zeros", "nonfinite", "min", "max", "absmax"):
        assert torch.equal(got[key].to(want[key].dtype), want[key]), key
    n = want["count"].clamp_min(1)
    sd = (want["m2"] / n).sqrt()
    spread = sd + want["mean"].abs() * 1e-6  # |mean| enters through the shift only
    assert bool(((got["mean"] - want["mean"]).abs() <= tol * spread + 1e-300).all()), "mean"
    for p, key in ((2, "m2"), (3, "m3"), (4, "m4")):
        # scale of a p-th central sum: n * sd^p (+ the max term for outlier-heavy channels)
        scale = n * sd**p + (want["absmax"] - want["mean"]).abs() ** p
        err = (got[key] - want[key]).abs()
        assert bool((err <= tol * scale + 1e-300).all()), (key, (err / scale).max().item())


# ------------------------------------------------------------------------------ moments
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,d", [(1, 1), (257, 37), (1000, 300), (300, 769), (150, 2100)])
def test_moments_match_reference(dtype, N, d):
    x = _data(N, d, dtype, seed=N + d)
    got, want = S.moments_init(d), R.moments_init(d)
    S.moments_update(got, x, backend="kernel")
    R.moments_update(want, x)
    _assert_moments_close(got, want)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_moments_large_mean_no_cancellation(dtype):
    """mean 1e4, sd ~1: a naive E[x^2]-E[x]^2 in float32 loses everything; we must not."""
    x = _data(4096, 129, dtype, seed=3, mean=1e4, nonfinite=False)
    got, want = S.moments_init(129), R.moments_init(129)
    S.moments_update(got, x, backend="kernel")
    R.moments_update(want, x)
    _assert_moments_close(got, want)
    # and at least as good as plain torch at the input precision (var over the same values)
    var_torch = x.var(0, unbiased=False).double()
    var_true = want["m2"] / want["count"]
    ours = ((got["m2"] / got["count"] - var_true).abs()).max()
    assert ours <= 2 * (var_torch - var_true).abs().max() + 1e-12 * var_true.max()


def test_moments_row_strided_and_transposed():
    base = _data(600, 500, torch.float32, seed=5)
    x = base[::2, 7:300]                       # row stride 1000, channels contiguous
    got, want = S.moments_init(293), R.moments_init(293)
    S.moments_update(got, x, backend="kernel")
    R.moments_update(want, x)
    _assert_moments_close(got, want)
    xt = _data(120, 90, torch.bfloat16, seed=6).t()  # channels not contiguous: copied
    got, want = S.moments_init(120), R.moments_init(120)
    S.moments_update(got, xt, backend="kernel")
    R.moments_update(want, xt)
    _assert_moments_close(got, want)
    one = _data(70, 1, torch.float32, seed=7).t()     # [1, 70] with strides (1, 1): torch
    got, want = S.moments_init(70), R.moments_init(70)  # calls it contiguous, row stride < d
    S.moments_update(got, one, backend="kernel")
    R.moments_update(want, one)
    _assert_moments_close(got, want)


def test_moments_all_nonfinite_channel_huge_values_and_numpy():
    x = _data(50, 5, torch.float32, seed=7, nonfinite=False)
    x[:, 2] = float("nan")
    x[:, 3] = torch.linspace(2e38, 3e38, 50)     # a float32 sum of these overflows
    got, want = S.moments_init(5), R.moments_init(5)
    S.moments_update(got, x.numpy(), backend="kernel")   # NumPy input, zero-copy
    R.moments_update(want, x)
    _assert_moments_close(got, want)
    assert got["count"][2] == 0 and got["nonfinite"][2] == 50 and got["absmax"][2] == 0


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_moments_half_subnormals_and_extremes(dtype):
    """Tiny (float16-subnormal) and extreme values through the half-precision conversions."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(333, 45, generator=g, dtype=torch.float64) * 1e-6
    x[:, 1] = torch.finfo(dtype).max * torch.rand(333, generator=g, dtype=torch.float64)
    x[:, 2] = -torch.finfo(dtype).tiny / 4          # subnormal in both formats
    x = x.to(dtype)
    got, want = S.moments_init(45), R.moments_init(45)
    S.moments_update(got, x, backend="kernel")
    R.moments_update(want, x)
    _assert_moments_close(got, want)


def test_moments_several_batches_equal_whole():
    x = _data(2000, 65, torch.float32, seed=8, mean=-300.0)
    inc, whole = S.moments_init(65), S.moments_init(65)
    for part in x.split(333):
        S.moments_update(inc, part, backend="kernel")
    S.moments_update(whole, x, backend="kernel")
    _assert_moments_close(inc, whole, tol=1e-11)


@settings(max_examples=25, deadline=None)
@given(N=st.integers(2, 700), d=st.integers(1, 140), frac=st.floats(0.0, 1.0),
       seed=st.integers(0, 10_000), dtype=st.sampled_from(DTYPES))
def test_moments_merge_of_halves_equals_whole(N, d, frac, seed, dtype):
    x = _data(N, d, dtype, seed=seed, mean=float(seed % 7) * 100)
    s = int(round(frac * N))
    a, b, whole = S.moments_init(d), S.moments_init(d), S.moments_init(d)
    S.moments_update(a, x[:s], backend="kernel")
    S.moments_update(b, x[s:], backend="kernel")
    S.moments_update(whole, x, backend="kernel")
    _assert_moments_close(S.moments_merge(a, b), whole, tol=1e-11)


def test_moments_auto_backend_uses_kernel_on_cpu(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("reference path taken")
    monkeypatch.setattr(R, "moments_update", boom)
    st_ = S.moments_init(4)
    S.moments_update(st_, torch.randn(10, 4))
    assert st_["count"].sum() == 40


# ------------------------------------------------------------------------------ latents
def _code(N, k, M, seed, dtype=torch.float32, idtype=torch.int32, ties=True):
    """A sparse code with empty slots, negative/NaN/Inf values and many exact ties."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.rand(N, k, generator=g, dtype=torch.float64) * 8
    if ties:
        vals = (vals * 2).round() / 2            # multiples of 0.5: ties everywhere
    vals[torch.rand(N, k, generator=g) < 0.05] *= -1
    vals[torch.rand(N, k, generator=g) < 0.01] = 1e-7   # below the histogram range
    vals[torch.rand(N, k, generator=g) < 0.01] = 1e5    # above it
    idx = torch.randint(0, M, (N, k), generator=g)
    idx[torch.rand(N, k, generator=g) < 0.1] = -1
    if N * k > 4:
        vals.view(-1)[0] = float("nan")
        vals.view(-1)[1] = float("inf")
        idx.view(-1)[:2] = torch.tensor([1, 2]) % M
    return vals.to(dtype), idx.to(idtype)


def _assert_latent_equal(got, want):
    for key in ("count", "hist", "top_values", "top_tokens", "hist_range"):
        assert torch.equal(got[key], want[key]), key
    for key in ("sum", "sumsq"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idtype", (torch.int32, torch.int64))
def test_latent_matches_reference_over_batches(dtype, idtype):
    M, T = 97, 5
    got, want = S.latent_init(M, top_t=T, n_bins=11), R.latent_init(M, top_t=T, n_bins=11)
    offset = 0
    for b, (N, k) in enumerate([(300, 7), (1, 7), (450, 7)]):
        vals, idx = _code(N, k, M, seed=b + 10 * len(str(dtype)), dtype=dtype, idtype=idtype)
        S.latent_update(got, vals, idx, offset, backend="kernel")
        R.latent_update(want, vals, idx, offset)
        offset += N
    _assert_latent_equal(got, want)


def test_latent_large_batch_threaded_sort():
    """N*k above the kernel's threading threshold: the counting sort runs per thread."""
    M, T = 500, 16
    vals, idx = _code(2048, 32, M, seed=21, dtype=torch.bfloat16)
    got, want = S.latent_init(M, top_t=T), R.latent_init(M, top_t=T)
    for off in (0, 2048):
        S.latent_update(got, vals, idx, off, backend="kernel")
        R.latent_update(want, vals, idx, off)
    _assert_latent_equal(got, want)


def test_latent_ties_to_earlier_token_and_out_of_order_offsets():
    M, T = 3, 4
    got, want = S.latent_init(M, top_t=T), R.latent_init(M, top_t=T)
    vals = torch.full((10, 1), 2.0)
    idx = torch.zeros(10, 1, dtype=torch.int32)
    for off in (100, 0, 50):                     # a later batch with earlier tokens wins ties
        S.latent_update(got, vals, idx, off, backend="kernel")
        R.latent_update(want, vals, idx, off)
    _assert_latent_equal(got, want)
    assert got["top_tokens"][0].tolist() == [0, 1, 2, 3]


def test_latent_untouched_latents_and_strided_input():
    M, T = 50, 3
    vals, idx = _code(200, 16, M, seed=3)
    idx[idx >= 40] = -1                          # latents 40.. never fire
    got, want = S.latent_init(M, top_t=T), R.latent_init(M, top_t=T)
    for s in (got, want):                        # poison the state of silent latents
        s["top_values"][40:] = 123.0
        s["top_tokens"][40:] = -77
        s["count"][40:] = 5
    big_v = torch.zeros(200, 40)
    big_v[:, 3:19] = vals
    S.latent_update(got, big_v[:, 3:19], idx, 7, backend="kernel")   # row stride 40
    R.latent_update(want, vals, idx, 7)
    _assert_latent_equal(got, want)
    assert (got["top_values"][40:] == 123.0).all() and (got["count"][40:] == 5).all()


def test_latent_sums_add_in_slot_order_unfused():
    """sum and sumsq are the serial float64 sums in slot order with every v*v rounded on
    its own (never fused into an FMA: the CUDA fold adds the same products, stats.h)."""
    g = torch.Generator().manual_seed(5)
    vals = torch.rand(3000, 2, generator=g, dtype=torch.float64) * 3 + 0.1
    idx = torch.zeros(3000, 2, dtype=torch.int32)
    st_ = S.latent_init(1)
    S.latent_update(st_, vals, idx, 0, backend="kernel")
    s = ss = 0.0
    for v in vals.reshape(-1).tolist():  # Python floats: one rounding per operation
        s += v
        ss += v * v
    assert st_["sum"].item() == s and st_["sumsq"].item() == ss


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 200), k=st.integers(1, 9), M=st.integers(1, 60), T=st.integers(1, 6),
       split=st.floats(0, 1), seed=st.integers(0, 9999))
def test_latent_merge_of_halves_equals_whole(N, k, M, T, split, seed):
    vals, idx = _code(N, k, M, seed=seed)
    s = int(round(split * N))
    a, b, whole = (S.latent_init(M, top_t=T) for _ in range(3))
    S.latent_update(a, vals[:s], idx[:s], 0, backend="kernel")
    S.latent_update(b, vals[s:], idx[s:], s, backend="kernel")
    S.latent_update(whole, vals, idx, 0, backend="kernel")
    _assert_latent_equal(S.latent_merge(a, b), whole)


# ------------------------------------------------------------------------------ bad input
def test_cuda_workspace_groups_firing_slots_in_slot_order():
    """The CSR the CUDA latent kernel folds (built with torch ops, so it runs here too):
    per latent exactly its firing slots (index >= 0, value > 0; NaN and negative values
    do not fire), in slot order, which is the CPU kernel's summation order."""
    g = torch.Generator().manual_seed(3)
    N, k, M = 40, 5, 17
    idx = torch.randint(-1, M, (N, k), generator=g, dtype=torch.int32)
    val = torch.randn(N, k, generator=g)
    val[3, 1] = float("nan")
    ws = S.firing_csr(val, idx, M)
    off, order = ws[:M + 1], ws[M + 1:]
    assert order.numel() == N * k and off[0] == 0
    for m in range(M):
        got = order[off[m]:off[m + 1]].tolist()
        want = [e for e in range(N * k) if idx.view(-1)[e] == m and val.view(-1)[e] > 0]
        assert got == want, m


def test_bad_inputs_are_named():
    st_ = S.moments_init(4)
    with pytest.raises(TypeError, match="x"):
        S.moments_update(st_, torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"x must have shape \[N, d\] with d=4"):
        S.moments_update(st_, torch.zeros(3, 5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        S.moments_update(st_, [[1.0] * 4])
    bad = S.moments_init(4)
    bad["m2"] = bad["m2"].float()
    with pytest.raises(ValueError, match=r"state\['m2'\] must be float64"):
        S.moments_update(bad, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="backend"):
        S.moments_update(st_, torch.zeros(3, 4), backend="fast")
    ls = S.latent_init(10, top_t=2)
    v, i = torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="indices must be < M=10"):
        S.latent_update(ls, v, i + 10, 0)
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        S.latent_update(ls, v, i.float(), 0)
    with pytest.raises(TypeError, match="values"):
        S.latent_update(ls, i, i, 0)
    with pytest.raises(ValueError, match=r"values and indices must both be \[N, k\]"):
        S.latent_update(ls, v, i[:, :1], 0)
    with pytest.raises(ValueError, match="token_offset must be >= 0"):
        S.latent_update(ls, v, i, -1)
    with pytest.raises(TypeError, match="token_offset must be an int"):
        S.latent_update(ls, v, i, 1.5)
    assert ls["count"].sum() == 0 and st_["count"].sum() == 0   # nothing half-applied


# ------------------------------------------------------------------------------ CUDA
# On a GPU and on the emulated core (tests/_cuda_targets.py), kernel forced.
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_moments_kernel(dtype, cuda_target):
    N, d = (3000, 300) if not cuda_target.emulated else (300, 37)
    x = _data(N, d, dtype, seed=11, mean=50.0)
    got, want = S.moments_init(d, device=cuda_target.device), R.moments_init(d)
    S.moments_update(got, cuda_target.to(x[::1, :]), backend=cuda_target.backend)
    S.moments_update(got, cuda_target.to(x)[:, :d][::2], backend=cuda_target.backend)  # strided
    R.moments_update(want, x)
    R.moments_update(want, x[::2])
    _assert_moments_close({k: v.cpu() for k, v in got.items()}, want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_latent_kernel(dtype, cuda_target):
    M, T, N, k = (1000, 8, 700, 32) if not cuda_target.emulated else (130, 4, 50, 6)
    dev, backend = cuda_target.device, cuda_target.backend
    got, want = S.latent_init(M, top_t=T, device=dev), R.latent_init(M, top_t=T)
    for b in range(3):
        vals, idx = _code(N, k, M, seed=b, dtype=dtype)
        S.latent_update(got, *cuda_target.to(vals, idx), N * b, backend=backend)
        R.latent_update(want, vals, idx, N * b)
    got = {key: v.cpu() for key, v in got.items()}
    for key in ("count", "hist", "top_values", "top_tokens"):
        assert torch.equal(got[key], want[key]), key
    for key in ("sum", "sumsq"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=0)
    # no float atomics: the sums add in slot order, as on the CPU kernel (v*v never fused
    # into the add, stats.h square_rn), and the same on every run
    cpu, again = S.latent_init(M, top_t=T), S.latent_init(M, top_t=T, device=dev)
    for b in range(3):
        vals, idx = _code(N, k, M, seed=b, dtype=dtype)
        S.latent_update(cpu, vals, idx, N * b, backend="kernel")
        S.latent_update(again, *cuda_target.to(vals, idx), N * b, backend=backend)
    for key in ("count", "sum", "sumsq", "hist", "top_values", "top_tokens"):
        assert torch.equal(got[key], cpu[key]), key
        assert torch.equal(got[key], again[key].cpu()), key


def _popular_code(N, k, M, seed, dtype):
    """Latent 1 fires on every row (N entries, several warp batches), latent 0 on every
    other row with values rising with the token (each entry beats the whole top list: long
    shifts), latent 2 twice in some rows (one token, two values); values are multiples of
    0.25 (ties everywhere, broken by token), for float64 also pairs 1e-12 apart that round to
    one float32 (the fold must order them in float64, as the CPU kernel does)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, M, (N, k), generator=g)
    idx[torch.rand(N, k, generator=g) < 0.1] = -1
    vals = ((torch.rand(N, k, generator=g, dtype=torch.float64) * 4 * 4).round() + 1) / 4
    idx[:, 0] = 1
    idx[::2, 1] = 0
    vals[::2, 1] = torch.arange(0, N, 2, dtype=torch.float64) / 4 + 0.25
    idx[5::7, 2:4] = 2
    if dtype == torch.float64:
        vals[::3, 0] = 10.0 + (torch.arange(0, N, 3, dtype=torch.float64) % 4) * 1e-12
    return vals.to(dtype), idx


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [5, 40])   # 40: the list spans two warp rounds
def test_cuda_latent_fold_bitwise_equals_cpu(dtype, T, cuda_target):
    """The warp-per-latent fold gives the CPU kernel's bits in every field: a latent on
    every row (more than 32 entries, across batches), rising values (insertions shifting the
    whole list), ties broken by token, a latent twice in one row, three batches."""
    M, N, k = 7, 90, 5
    dev, backend = cuda_target.device, cuda_target.backend
    cpu, got = S.latent_init(M, top_t=T), S.latent_init(M, top_t=T, device=dev)
    ref = R.latent_init(M, top_t=T)
    for b, off in enumerate((40, 0, 500)):
        vals, idx = _popular_code(N, k, M, seed=b, dtype=dtype)
        S.latent_update(cpu, vals, idx, off, backend="kernel")
        S.latent_update(got, *cuda_target.to(vals, idx), off, backend=backend)
        R.latent_update(ref, vals, idx, off)
    got = {key: v.cpu() for key, v in got.items()}
    assert int(cpu["count"][1]) >= 3 * N and int(cpu["top_tokens"][1, 0]) >= 0
    for key in ("count", "sum", "sumsq", "hist", "top_values", "top_tokens"):
        assert torch.equal(got[key], cpu[key]), key
    if dtype != torch.float64:
        _assert_latent_equal(got, ref)
    else:  # the kernels order a stored list's float32 ties as they were in float64 (the
        # reference re-sorts them by token): the top lists differ from it, by design of the
        # CPU kernel; everything else agrees
        _assert_latent_equal({**got, "top_values": ref["top_values"],
                              "top_tokens": ref["top_tokens"]}, ref)


@pytest.mark.gpu
def test_cuda_latent_fold_unsorted_state_equals_cpu(cuda_target):
    """A state whose top lists are not sorted (merged by hand, or poisoned): the warp-wide
    insertion still puts every entry exactly where the CPU kernel's serial loop does."""
    M, N, k, T = 5, 80, 4, 37
    g = torch.Generator().manual_seed(9)
    cpu = S.latent_init(M, top_t=T)
    cpu["top_values"] = ((torch.rand(M, T, generator=g) * 12).round() / 2).float()
    cpu["top_tokens"] = torch.randint(0, 1000, (M, T), generator=g)
    got = {key: v.clone().to(cuda_target.device) for key, v in cpu.items()}
    vals, idx = _popular_code(N, k, M, seed=7, dtype=torch.float32)
    S.latent_update(cpu, vals, idx, 300, backend="kernel")
    S.latent_update(got, *cuda_target.to(vals, idx), 300, backend=cuda_target.backend)
    for key in ("count", "sum", "sumsq", "hist", "top_values", "top_tokens"):
        assert torch.equal(got[key].cpu(), cpu[key]), key


@pytest.mark.gpu
def test_cuda_latent_float64_ties_stored_out_of_token_order(cuda_target):
    """float64 values 1e-12 apart are ranked in float64, then stored as one float32 value:
    the stored list [(10, tok 15), (10, tok 10)] is out of token order. Inserting (11, tok 0)
    lifts (10, 15) to the end, which (10, tok 12) beats: the CPU kernel keeps tok 12, and
    so must the fold (a batch filter on the first last entry, (10, 10), would drop it)."""
    one = torch.zeros(1, 1, dtype=torch.int32)
    a_v = torch.full((6, 1), -1.0, dtype=torch.float64)
    a_v[0], a_v[5] = 10 + 1e-12, 10 + 2e-12
    b_v = torch.full((13, 1), -1.0, dtype=torch.float64)   # non-positive: does not fire
    b_v[0], b_v[12] = 11.0, 10.0
    cpu = S.latent_init(1, top_t=2)
    got = S.latent_init(1, top_t=2, device=cuda_target.device)
    for vals, off in ((a_v, 10), (b_v, 0)):
        idx = one.expand(vals.shape[0], 1).contiguous()
        S.latent_update(cpu, vals, idx, off, backend="kernel")
        S.latent_update(got, *cuda_target.to(vals, idx), off, backend=cuda_target.backend)
    assert cpu["top_tokens"][0].tolist() == [0, 12]
    for key in ("count", "sum", "sumsq", "hist", "top_values", "top_tokens"):
        assert torch.equal(got[key].cpu(), cpu[key]), key


@pytest.mark.gpu
def test_cuda_latent_top_list_too_long_is_named(cuda_target):
    ls = S.latent_init(3, top_t=4000, device=cuda_target.device)
    v, i = cuda_target.to(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="top_t = 4000"):
        S.latent_update(ls, v, i, 0, backend=cuda_target.backend)
    assert ls["count"].sum() == 0


@pytest.mark.gpu
def test_cuda_moments_many_chunks_tree_and_bounded_workspace(cuda_target):
    """Five row chunks (a tree merge with an odd leaf) over two channel tiles, NaN rows
    included; and the workspace stays bounded whatever N is (at most 128 chunks)."""
    from actspace.ops._common import module_for

    c = module_for("cuda_emulated" if cuda_target.emulated else "cuda")
    assert c.stats_moments_cuda_chunks(1100) == 5
    assert c.stats_moments_cuda_chunks(10**9) <= 128
    x = _data(1100, 33, torch.float32, seed=12, mean=-3.0)
    got, want = S.moments_init(33, device=cuda_target.device), R.moments_init(33)
    S.moments_update(got, cuda_target.to(x[:5]), backend=cuda_target.backend)  # a state first
    S.moments_update(got, cuda_target.to(x), backend=cuda_target.backend)
    R.moments_update(want, x[:5])
    R.moments_update(want, x)
    _assert_moments_close({k: v.cpu() for k, v in got.items()}, want)
