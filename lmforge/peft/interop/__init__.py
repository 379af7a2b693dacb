"""Hugging Face PEFT's adapter files, both ways, and one loader for every saved delta."""

from lmforge.peft.interop.load import adapter_kind, load_adapter
from lmforge.peft.interop.lora import load_peft_lora, read_peft_lora, save_peft_lora
from lmforge.peft.interop.virtual import load_peft_virtual, save_peft_virtual

__all__ = [
    "adapter_kind",
    "load_adapter",
    "load_peft_lora",
    "load_peft_virtual",
    "read_peft_lora",
    "save_peft_lora",
    "save_peft_virtual",
]
