"""Quantization of weights: 4-bit code books, block-wise (double) quantization, NF4Linear,
16-bit embeddings, whole models; the block-wise 8-bit codec (blockwise.py)."""

from lmforge.quant.apply import QuantReport, load_quantized, quantize_model, save_quantized
from lmforge.quant.blockwise import (
    dequantize_blockwise,
    dynamic_map,
    dynamic_tree_map,
    quantize_blockwise,
)
from lmforge.quant.codebooks import CODEBOOKS, CodeBook, codebook, normal_float_values
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

__all__ = [
    "CODEBOOKS",
    "CodeBook",
    "DoubleQuant",
    "NF4Linear",
    "QuantReport",
    "Quantized4bit",
    "codebook",
    "dequantize_4bit",
    "dequantize_blockwise",
    "double_dequantize",
    "double_quantize",
    "dynamic_map",
    "dynamic_tree_map",
    "load_quantized",
    "normal_float_values",
    "overhead_bits",
    "quantization_error",
    "quantize_4bit",
    "quantize_blockwise",
    "quantize_model",
    "save_quantized",
]
