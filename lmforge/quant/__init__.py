"""Quantization: 4-bit code books, block-wise (double) quantization, NF4Linear, whole models;
memory-saving optimizers (8-bit and paged AdamW)."""

from lmforge.quant.apply import QuantReport, load_quantized, quantize_model, save_quantized
from lmforge.quant.codebooks import (
    CODEBOOKS,
    CodeBook,
    codebook,
    dynamic_map,
    normal_float_values,
)
from lmforge.quant.linear4bit import NF4Linear
from lmforge.quant.nf4 import (
    DoubleQuant,
    Quantized4bit,
    dequantize_4bit,
    double_dequantize,
    double_quantize,
    overhead_bits,
    quantization_error,
    quantize_4bit,
)
from lmforge.quant.optim import OPTIMIZERS, AdamW8bit, PagedAdamW, build_optimizer, state_bytes

__all__ = [
    "OPTIMIZERS",
    "AdamW8bit",
    "PagedAdamW",
    "build_optimizer",
    "state_bytes",
    "CODEBOOKS",
    "CodeBook",
    "DoubleQuant",
    "NF4Linear",
    "QuantReport",
    "Quantized4bit",
    "codebook",
    "dequantize_4bit",
    "double_dequantize",
    "double_quantize",
    "dynamic_map",
    "load_quantized",
    "normal_float_values",
    "overhead_bits",
    "quantization_error",
    "quantize_4bit",
    "quantize_model",
    "save_quantized",
]
