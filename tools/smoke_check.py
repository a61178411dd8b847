"""Smoke check of an INSTALLED actspace wheel (run by tools/smoke_wheel.sh in a fresh venv).

Import, build_info(), one op of each kernel family (csrc/families.txt) through the compiled
kernel (backend='kernel': an error, not a silent fallback, if the core is missing) against
actspace.reference, and `actspace --help`. Prints one line per check; exits 1 on a failure.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import actspace


def check_install_location() -> None:
    where = Path(actspace.__file__).resolve()
    assert "site-packages" in where.parts, f"actspace imported from {where}, not the venv"
    print(f"import: {where.parent}")


def check_build_info(expected_version: str | None) -> None:
    info = actspace.build_info()
    assert info["version"] == actspace.__version__, (info["version"], actspace.__version__)
    if expected_version:
        assert actspace.__version__ == expected_version, (actspace.__version__, expected_version)
    print(f"build_info: {info}")


def check_families() -> None:
    import torch

    from actspace import ops, reference
    from actspace.reference import stats as reference_stats

    g = torch.Generator().manual_seed(0)
    N, d, M, k = 64, 48, 300, 8
    x = torch.randn(N, d, generator=g)
    W_enc = torch.randn(M, d, generator=g) / d**0.5
    b_enc = torch.randn(M, generator=g) * 0.1
    b_dec = torch.randn(d, generator=g) * 0.1

    vals, idx = ops.topk_encode(x, W_enc, b_enc, k, b_dec=b_dec, backend="kernel")
    rv, ri = reference.topk_encode(x, W_enc, b_enc, k, b_dec=b_dec)
    assert torch.equal(idx.sort(dim=1).values, ri.sort(dim=1).values), "topk_encode indices"
    torch.testing.assert_close(vals, rv, rtol=1e-5, atol=1e-5)
    print("topk_encode: kernel == reference")

    W_dec = torch.randn(M, d, generator=g)
    out = ops.sparse_decode(vals, idx, W_dec, b_dec, backend="kernel")
    ref = reference.sparse_decode(vals, idx, W_dec, b_dec)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    print("sparse_decode: kernel == reference")

    state, ref_state = reference_stats.moments_init(d), reference_stats.moments_init(d)
    for chunk in x.split(24):
        ops.stats.moments_update(state, chunk, backend="kernel")
        reference_stats.moments_update(ref_state, chunk)
    for key in ("count", "mean", "m2", "m3", "m4", "min", "max", "zeros", "nonfinite"):
        torch.testing.assert_close(state[key], ref_state[key], rtol=1e-9, atol=1e-9)
    print("stats.moments_update: kernel == reference")


def check_cli() -> None:
    out = subprocess.run(["actspace", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), (out.returncode, out.stderr)
    print(f"actspace --help: ok ({len(out.stdout.splitlines())} lines)")


def main() -> int:
    expected = sys.argv[1] if len(sys.argv) > 1 else None
    for check in (check_install_location, lambda: check_build_info(expected), check_families,
                  check_cli):
        try:
            check()
        except Exception as e:  # one line per failure, then stop
            print(f"SMOKE FAIL: {type(e).__name__}: {e}")
            return 1
    print("SMOKE OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
