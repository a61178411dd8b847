"""Every per-ISA copy of the CPU kernels passes the kernel tests, not only the best one this
CPU runs by default: the kernel test files run again in a subprocess with the copy capped
by ACTSPACE_ISA (a user's AVX2 laptop or a non-x86 machine gets those copies)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import actspace

HERE = os.path.dirname(os.path.abspath(__file__))
# tests/test_<family>.py for every family of csrc/families.txt (the one list of families)
FAMILIES_TXT = os.path.join(HERE, "..", "..", "csrc", "families.txt")


def families() -> list[str]:
    with open(FAMILIES_TXT) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]


KERNEL_TESTS = [f"test_{f}.py" for f in families()]


def _simd(isa: str) -> str:
    env = dict(os.environ, ACTSPACE_ISA=isa)
    out = subprocess.run([sys.executable, "-c", "import actspace; "
                          "print(actspace.build_info()['simd'])"], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_kernel_suite_on_copy(isa):
    if isa not in actspace.build_info()["simd_compiled"]:
        pytest.skip(f"the {isa} copy is not compiled in on this platform")
    if _simd(isa) != isa:
        pytest.skip(f"this CPU cannot run the {isa} copy")
    env = dict(os.environ, ACTSPACE_ISA=isa)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        *[os.path.join(HERE, f) for f in KERNEL_TESTS]], env=env, cwd=HERE,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and " failed" not in p.stdout


def test_families_listed_once_and_followed():
    """csrc/families.txt is the one list: the compiled core was built from it, and every
    family has its csrc folder, ops module, test file and benchmark."""
    fams = families()
    assert actspace.build_info()["families"] == fams
    root = os.path.join(HERE, "..", "..")
    for f in fams:
        for path in (f"csrc/{f}/cuda.cu", f"csrc/{f}/cpu.cpp", f"csrc/{f}/bind.cpp",
                     f"python/actspace/ops/{f}.py", f"tests/ops/test_{f}.py", f"bench/bench_{f}.py"):
            assert os.path.exists(os.path.join(root, path)), path


def test_bad_isa_cap_is_named():
    env = dict(os.environ, ACTSPACE_ISA="sse9")
    p = subprocess.run([sys.executable, "-c", "import torch, actspace as a; "
                        "a.ops.sparse_decode(torch.ones(1, 1), torch.zeros(1, 1, "
                        "dtype=torch.int32), torch.ones(2, 3))"],
                       env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "ACTSPACE_ISA" in p.stderr
