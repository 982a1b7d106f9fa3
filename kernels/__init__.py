"""kernels: fused LoRA linear in Triton, with a plain-torch reference.

lora_linear(x, weight, lora_a, lora_b, scaling, bias=None, dropout_p=0.0)
use_fused_lora(peft_model) -> number of layers switched
lora_reference(...)        -> the plain-torch definition the kernels are tested against
"""

from kernels.lora import lora_linear, pick_backend
from kernels.peft_patch import use_fused_lora
from kernels.reference import lora_reference

__all__ = ["lora_linear", "lora_reference", "pick_backend", "use_fused_lora"]
