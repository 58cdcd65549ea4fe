"""Every CUDA C kernel source shipped compiles with NVRTC for sm_90 (no GPU needed)."""

from __future__ import annotations

import pytest

from ops._gpu import ALL_KERNELS

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="needs the gpu extra (cuda-toolkit[nvrtc])")


@pytest.mark.parametrize("name", sorted(ALL_KERNELS))
def test_kernel_compiles_for_sm90(name):
    from scheduler.cuda_runtime import nvrtc_compile

    cubin = nvrtc_compile(ALL_KERNELS[name].source, name, "sm_90")
    assert cubin[:4] == b"\x7fELF"  # a cubin is an ELF image


def test_a_typo_fails_with_the_compiler_log():
    from scheduler.cuda_runtime import nvrtc_compile
    from scheduler.runtime import CudaError

    with pytest.raises(CudaError, match="NVRTC could not compile kernel 'broken'"):
        nvrtc_compile('extern "C" __global__ void broken(float* x) { x[0] = undefined_name; }', "broken")
