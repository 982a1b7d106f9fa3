"""Our op is named in profiles: the dispatcher records `nif::lora_fwd` / `nif::lora_bwd`, and
the work inside carries `<op>.<backend>` ranges (record_function; NVTX too on CUDA), the torch
path as well, which has no custom op. On CPU the Triton paths run interpreted."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from nif_kernels import lora_linear


@pytest.mark.parametrize("backend", ["cublas", "fused", "torch"])
def test_lora_ops_are_named_in_a_profile(backend):
    torch.manual_seed(0)
    x = torch.randn(16, 32, requires_grad=True)
    W = torch.randn(24, 32)
    A = torch.randn(4, 32, requires_grad=True)
    B = torch.randn(24, 4, requires_grad=True)
    with profile() as prof:
        lora_linear(x, W, A, B, 0.5, backend=backend).sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert f"nif::lora_fwd.{backend}" in names
    if backend != "torch":  # the torch path's backward is plain autograd nodes
        assert {"nif::lora_fwd", "nif::lora_bwd", f"nif::lora_bwd.{backend}"} <= names
