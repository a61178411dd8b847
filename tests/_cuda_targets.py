"""Where the CUDA kernel tests run: on a GPU (device 'cuda', backend 'kernel') and on the
emulated core (CPU tensors, backend 'cuda_emulated': the same CUDA kernel sources compiled for
the host against csrc/common/cuda_emulate.h, each block's threads as OS threads). CI builds the
emulated core under ASan+UBSan and under TSan and runs `-k cuda_emulated` with it (.ci/run);
ACTSPACE_REQUIRE_EMULATED=1 turns its absence into a failure there instead of a skip."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import pytest
import torch

from actspace.ops import _common


@dataclass(frozen=True)
class CudaTarget:
    device: str     # where the tensors live
    backend: str    # the ops' backend argument
    emulated: bool

    def to(self, *tensors, dtype=None):
        out = tuple(t.to(self.device, dtype) if dtype else t.to(self.device) for t in tensors)
        return out[0] if len(out) == 1 else out

    def side_stream(self):
        """A non-default stream on a GPU (kernels must launch on the current stream)."""
        if self.emulated:
            return contextlib.nullcontext()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        return torch.cuda.stream(s)

    def sync(self):
        if not self.emulated:
            torch.cuda.synchronize()


def emulated_available() -> bool:
    if _common.emulated_core() is not None:
        return True
    if os.environ.get("ACTSPACE_REQUIRE_EMULATED") == "1":
        raise RuntimeError("ACTSPACE_REQUIRE_EMULATED=1 but the emulated CUDA core is not "
                           "loadable (set ACTSPACE_CUDA_EMULATED_CORE)")
    return False


@pytest.fixture(params=["cuda", "cuda_emulated"])
def cuda_target(request) -> CudaTarget:
    if request.param == "cuda":
        if not (torch.cuda.is_available() and _common.cuda_built()):
            pytest.skip("needs a CUDA device and a CUDA build")
        return CudaTarget("cuda", "kernel", False)
    if not emulated_available():
        pytest.skip("needs the emulated CUDA core (cmake -DACTSPACE_CUDA_EMULATE=ON; "
                    "ACTSPACE_CUDA_EMULATED_CORE=<build dir>); .ci/run builds and runs it")
    return CudaTarget("cpu", "cuda_emulated", True)
