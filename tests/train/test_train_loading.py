"""ZeRO-3 slice reading (`loading._flat_range`): each rank's flat range of a checkpoint tensor,
read from safetensors rows only, equals that range of the whole tensor, for partitions that
split a row and for the padded last partition of world sizes that do not divide the size."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nif_lightning.loading import _flat_range


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_each_rank_reads_exactly_its_range(tmp_path, world):
    g = torch.Generator().manual_seed(world)
    tensors = {
        "odd_matrix": torch.randn(37, 101, generator=g),  # 3737 elements: padding for most worlds
        "vector": torch.randn(1031, generator=g),
        "cube": torch.randn(3, 7, 11, generator=g),
        "tiny": torch.randn(2, generator=g),  # fewer elements than ranks at world 3+
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        for name, full in tensors.items():
            flat = full.reshape(-1)
            part = -(-flat.numel() // world)  # DeepSpeed's partition: ceil(numel / world)
            pieces = []
            for rank in range(world):
                start, end = part * rank, min(part * (rank + 1), flat.numel())
                if start < end:
                    got = _flat_range(f.get_slice(name), tuple(full.shape), start, end)
                    assert torch.equal(got, flat[start:end]), (name, rank)
                    pieces.append(got)
            assert torch.equal(torch.cat(pieces), flat)  # the ranks cover it all, once
