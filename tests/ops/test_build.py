"""The package builds, imports lightly, and reports what was compiled."""
import subprocess
import sys

import pytest

import actspace


def test_build_info_fields():
    info = actspace.build_info()
    assert info["version"] == actspace.__version__
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_archs"], list)
    assert info["cuda"] == bool(info["cuda_archs"])
    assert isinstance(info["openmp"], bool)
    assert info["simd"] in info["simd_compiled"]


def test_import_is_light():
    """`import actspace` must not import torch (CLIs start before torch does)."""
    code = "import sys, actspace; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        actspace.nope  # noqa: B018


def test_backend_argument_checked():
    import torch

    from actspace.ops._common import use_kernel

    with pytest.raises(ValueError, match="backend"):
        use_kernel("topk_encode", torch.device("cpu"), "fast")
    assert use_kernel("topk_encode", torch.device("cpu"), "reference") is False


def test_cuda_not_routed_until_verified():
    """DESIGN: CUDA tensors take the reference path until the GPU suite passed on a GPU."""
    import torch

    from actspace.ops._common import VERIFIED_CUDA, use_kernel

    for family in ("topk_encode", "sparse_decode", "stats"):
        if family not in VERIFIED_CUDA:
            assert use_kernel(family, torch.device("cuda"), "auto") is False


def test_cuda_routing_follows_the_verified_list(monkeypatch):
    """With a CUDA build, "auto" sends CUDA tensors to exactly the verified families' kernels,
    and ACTSPACE_CUDA_KERNELS=1 to every family's."""
    import torch

    from actspace.ops import _common

    monkeypatch.setattr(_common, "cuda_built", lambda: True)
    monkeypatch.delenv("ACTSPACE_CUDA_KERNELS", raising=False)
    cuda = torch.device("cuda")
    assert _common.VERIFIED_CUDA == {"sparse_decode", "stats"}
    for family in ("topk_encode", "sparse_decode", "stats"):
        want = _common.CUDA if family in _common.VERIFIED_CUDA else None
        assert _common.kernel_path(family, cuda, "auto") == want
        assert _common.kernel_path(family, cuda, "reference") is None
    monkeypatch.setenv("ACTSPACE_CUDA_KERNELS", "1")
    assert _common.kernel_path("topk_encode", cuda, "auto") == _common.CUDA
    monkeypatch.setattr(_common, "cuda_built", lambda: False)
    assert _common.kernel_path("stats", cuda, "auto") is None


def test_cuda_emulated_backend_checks(monkeypatch):
    """backend='cuda_emulated' takes CPU tensors only and names the missing emulated core."""
    import torch

    from actspace.ops import _common

    with pytest.raises(ValueError, match="must be on the CPU"):
        _common.kernel_path("stats", torch.device("cuda"), "cuda_emulated")
    monkeypatch.setattr(_common, "_emulated_module", False)  # as when it was not built
    monkeypatch.delenv("ACTSPACE_CUDA_EMULATED_CORE", raising=False)
    with pytest.raises(RuntimeError, match="emulated core is not built"):
        _common.kernel_path("stats", torch.device("cpu"), "cuda_emulated")


def test_emulated_core_path_errors_name_the_variable(monkeypatch, tmp_path):
    from actspace.ops import _common

    monkeypatch.setattr(_common, "_emulated_module", None)
    monkeypatch.setenv("ACTSPACE_CUDA_EMULATED_CORE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ACTSPACE_CUDA_EMULATED_CORE"):
        _common.emulated_core()
