import os

import torch

# Without a GPU the Triton kernels run under Triton's interpreter (numpy on the CPU). The
# variable is read when a `@triton.jit` function is defined, so it must be set before any test
# module imports `kernels`.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
