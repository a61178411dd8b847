"""The kernels as an embeddable C++ library (issue 21): a plain CMake build with
ACTSPACE_PYTHON=OFF installs actspace::kernels with its package config; the example in
examples/cpp finds it with find_package(actspace), calls actspace::topk_encode on raw float
pointers (its own tile GEMM + the merge/finish kernels), and must match actspace.reference;
a second program does the same for sparse_decode and the streaming moments.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import actspace
from actspace import reference
from actspace.reference import stats as reference_stats

ROOT = Path(__file__).resolve().parents[2]
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or CXX is None,
                                reason="needs cmake and a C++ compiler")


def _run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _generator_args():
    return ["-G", "Ninja"] if shutil.which("ninja") else []


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Build + install the library into a prefix, then build the example against it."""
    tmp = tmp_path_factory.mktemp("cpp")
    build, prefix, ex_build = tmp / "build", tmp / "prefix", tmp / "example"
    _run(["cmake", "-S", ROOT, "-B", build, *_generator_args(), "-DACTSPACE_PYTHON=OFF",
          "-DCMAKE_BUILD_TYPE=Release"])
    _run(["cmake", "--build", build, "-j", "2"], timeout=900)
    _run(["cmake", "--install", build, "--prefix", prefix])
    # only the public headers are installed, never the kernel internals
    headers = sorted(p.name for p in (prefix / "include" / "actspace").iterdir())
    assert headers == ["actspace.hpp", "sparse_decode.hpp", "stats.hpp", "topk_encode.hpp",
                       "version.hpp"]
    _run(["cmake", "-S", ROOT / "examples" / "cpp", "-B", ex_build, *_generator_args(),
          f"-DCMAKE_PREFIX_PATH={prefix}"])
    _run(["cmake", "--build", ex_build])
    assert (ex_build / "decode_stats_example").exists()
    exe = ex_build / "topk_encode_example"
    assert exe.exists()
    return exe


def test_example_demo_hand_values(example):
    """The built-in problem, computed by hand: z = x @ Wᵀ, ReLU, top-2, ties to the lower index."""
    out = _run([example]).stdout.splitlines()
    assert out[0] == f"actspace {actspace.__version__}"  # the package version reaches C++
    # row 0: x = (1,0,0) -> z = (1, 0, 0, -1) -> relu (1, 0, 0, 0): (0, 1), then 0 at index 1
    # row 1: x = (0,1,2) -> z = (0, 1, 2, 3)
    assert out[1:] == ["row 0: (0, 1) (1, 0)", "row 1: (3, 3) (2, 2)"]


def _encode(example, tmp_path, x, W, b_enc, b_dec, k, relu, isa=None):
    n, d = x.shape
    m = W.shape[0]
    inp, outp = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        np.array([n, d, m, k, int(relu)], dtype="<i8").tofile(f)
        for a in (x, W, b_enc, b_dec):
            a.numpy().astype("<f4").tofile(f)
    env = dict(os.environ, **({"ACTSPACE_ISA": isa} if isa else {}))
    _run([example, inp, outp], env=env)
    raw = np.fromfile(outp, dtype=np.uint8)
    assert raw.size == n * k * 8
    vals = raw[: n * k * 4].view("<f4").reshape(n, k)
    idx = raw[n * k * 4:].view("<i4").reshape(n, k)
    return torch.from_numpy(vals.copy()), torch.from_numpy(idx.copy())


@pytest.mark.parametrize("relu,isa", [(True, None), (False, None), (True, "generic")])
def test_example_matches_reference(example, tmp_path, relu, isa):
    """Several row blocks (n > 256) and latent tiles (m > 4096) of the C++ driver, an odd d,
    b_dec and b_enc, and (with ReLU and a negative bias) rows where every activation ties at 0."""
    g = torch.Generator().manual_seed(3)
    n, d, m, k = 300, 37, 4500, 16
    x = torch.randn(n, d, generator=g)
    x[:5] = 0  # rows of zeros: with ReLU, b_enc ~ -1 and a small b_dec all activations are 0
    W = torch.randn(m, d, generator=g)
    b_enc = torch.randn(m, generator=g) * 0.1 - (1.0 if relu else 0.0)
    b_dec = torch.randn(d, generator=g) * 0.01
    vals, idx = _encode(example, tmp_path, x, W, b_enc, b_dec, k, relu, isa)
    act = "relu" if relu else "none"
    rv, ri = reference.topk_encode(x.double(), W.double(), b_enc.double(), k, b_dec=b_dec.double(),
                                   activation=act)
    # sorted values (and hence the k-th value) agree to float32 GEMM rounding
    torch.testing.assert_close(vals.double(), rv, rtol=1e-4, atol=1e-4)
    # index sets agree wherever the float64 k-th and (k+1)-th values are not a near tie
    z = reference.topk_preactivation(x.double(), W.double(), b_enc.double(), b_dec=b_dec.double())
    z = torch.relu(z) if relu else z
    top = z.topk(k + 1, dim=1).values
    clear = (top[:, k - 1] - top[:, k]) > 1e-3
    assert clear.float().mean() > 0.9
    for r in torch.nonzero(clear).flatten().tolist():
        assert set(idx[r].tolist()) == set(ri[r].tolist()), f"row {r}"
    if relu:  # all-zero rows: relu(b_enc - W b_dec) = 0 everywhere; ties go to the lower index
        assert torch.equal(ri[:5], torch.arange(k, dtype=torch.int32).expand(5, k))
        assert torch.equal(idx[:5], ri[:5]) and torch.all(vals[:5] == 0)


def test_decode_and_moments_match_reference(example, tmp_path):
    """sparse_decode (with -1 slots and repeated latents) and moments_update in two blocks."""
    g = torch.Generator().manual_seed(5)
    n, k, m, d = 301, 12, 900, 33
    values = torch.randn(n, k, generator=g)
    indices = torch.randint(0, m, (n, k), generator=g, dtype=torch.int32)
    indices[::7, -3:] = -1  # empty slots are skipped
    indices[1, :2] = 17  # a latent twice in one row adds twice
    W_dec = torch.randn(m, d, generator=g)
    b_dec = torch.randn(d, generator=g)
    inp, outp = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        np.array([n, k, m, d], dtype="<i8").tofile(f)
        values.numpy().astype("<f4").tofile(f)
        indices.numpy().astype("<i4").tofile(f)
        W_dec.numpy().astype("<f4").tofile(f)
        b_dec.numpy().astype("<f4").tofile(f)
    _run([example.parent / "decode_stats_example", inp, outp])
    raw = np.fromfile(outp, dtype=np.uint8)
    assert raw.size == n * d * 4 + 7 * d * 8 + 2 * d * 8
    x_hat = torch.from_numpy(raw[: n * d * 4].view("<f4").reshape(n, d).copy())
    f64 = raw[n * d * 4: n * d * 4 + 7 * d * 8].view("<f8").reshape(7, d)
    i64 = raw[n * d * 4 + 7 * d * 8:].view("<i8").reshape(2, d)

    ref = reference.sparse_decode(values.double(), indices, W_dec.double(), b_dec.double())
    torch.testing.assert_close(x_hat.double(), ref, rtol=1e-5, atol=1e-4)

    state = reference_stats.moments_init(d)
    reference_stats.moments_update(state, x_hat.double())  # moments of the values it saw
    for row, key in enumerate(("count", "mean", "m2", "m3", "m4", "min", "max")):
        torch.testing.assert_close(torch.from_numpy(f64[row].copy()), state[key],
                                   rtol=1e-9, atol=1e-7, msg=key)
    assert torch.equal(torch.from_numpy(i64[0].copy()), state["zeros"])
    assert torch.equal(torch.from_numpy(i64[1].copy()), state["nonfinite"])
