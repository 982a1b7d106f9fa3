"""kernels: fused LoRA linear in Triton, with a plain-torch reference."""
