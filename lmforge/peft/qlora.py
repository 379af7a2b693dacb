"""QLoRA: LoRA on a 4-bit NormalFloat base (Dettmers et al., 2023).

The paper's recipe, in lmforge's pieces:

    every linear layer but the head ──quantize_model──► NF4Linear (4-bit codes, block 64,
                                                        constants double-quantized: 4.127 bits)
    LoRA on every linear layer (all-linear) ──► LoraLinear(NF4Linear) ── only A, B train

    y = dequant(W_nf4) x + (α / r) · B A x        dequantized on the fly, in the compute dtype

The third idea of the paper, paged optimizers, is an optimizer choice of the training loop
(`train.optimizer: paged_adamw`, lmforge/train/optim/paged.py), not part of the model.

A saved QLoRA delta holds only A and B: loading it quantizes the same base again
(quantization is deterministic) and puts the same low-rank weights on top. Merging B A into
4-bit weights would re-round them, so the method is not mergeable; dequantize to merge.
At initialisation the model computes the *quantized* base's output, not the float base's.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmforge.errors import ConfigError
from lmforge.model.targets import match_targets
from lmforge.peft.base import DeltaMethod, register
from lmforge.peft.lora import Lora, LoraConfig
from lmforge.quant.apply import quantize_model
from lmforge.quant.codebooks import CODEBOOKS
from lmforge.quant.embed16 import STORAGE_DTYPES, store_embeddings
from lmforge.quant.linear4bit import NF4Linear


@dataclass
class QloraConfig:
    r: int = 8  # rank of the update B·A
    alpha: float = 16.0  # numerator of the scaling α/r (α/√r with rslora)
    dropout: float = 0.0  # dropout on the input of the low-rank path (the paper: 0.05-0.1)
    targets: list[str] | str | None = "all-linear"  # LoRA targets; the paper adapts all linears
    rslora: bool = False  # rank-stabilised scaling α/√r
    init: str = "kaiming"  # initialisation of A: kaiming | gaussian
    quant_type: str = "nf4"  # the base's 4-bit code book: nf4 | fp4 | int4
    double_quant: bool = True  # quantize the block constants again (8 bits, blocks of 256)
    blocksize: int = 64  # weights per absmax block
    embedding_dtype: str | None = "bfloat16"  # the frozen embeddings' storage (the paper's
    # 16-bit rest of the model); None keeps them in the model's dtype

    def lora(self) -> LoraConfig:
        return LoraConfig(self.r, self.alpha, self.dropout, self.targets, self.rslora, self.init)

    def validate(self) -> None:
        self.lora().validate()
        if self.quant_type not in CODEBOOKS:
            raise ConfigError(
                f"qlora.quant_type {self.quant_type!r} is unknown; choose from {CODEBOOKS.names()}"
            )
        if self.blocksize <= 0:
            raise ConfigError(f"qlora.blocksize must be positive, got {self.blocksize}")
        if self.embedding_dtype is not None and self.embedding_dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"qlora.embedding_dtype {self.embedding_dtype!r} is unknown; choose from "
                f"{sorted(STORAGE_DTYPES)} or null (keep the model's dtype)"
            )


@register
class Qlora(DeltaMethod):
    """NF4 base (every linear but the head) + LoRA; only the low-rank matrices train."""

    name = "qlora"
    family = "reparameterization"
    mergeable = False
    identity_at_init = False  # the quantized base differs from the float one
    Config = QloraConfig
    saved_before = {"embedding_dtype": None}  # deltas saved before the field kept fp32

    def __init__(self, config: QloraConfig | None = None) -> None:
        super().__init__(config)
        self.lora = Lora(self.config.lora())
        self.report = None  # the QuantReport of the base

    def quantization(self) -> dict:
        """The base's quantize_model settings: pass them to `load_model(..., quantize=)` to
        quantize while loading, which never holds the float model (apply then keeps it)."""
        c = self.config
        return {
            "quant_type": c.quant_type,
            "double_quant": c.double_quant,
            "blocksize": c.blocksize,
            "embedding_dtype": c.embedding_dtype,
        }

    def load_options(self) -> dict:
        return {"quantize": self.quantization()}

    def inject(self, model: nn.Module) -> nn.Module:
        c = self.config
        targets = match_targets(model, c.targets)  # names first: the layers are swapped next
        quantized = [m for m in model.modules() if isinstance(m, NF4Linear)]
        if not quantized:
            self.report = quantize_model(model, **self.quantization())
        else:
            want = self.quantization()
            embedding_dtype = want.pop("embedding_dtype")
            if embedding_dtype is not None:  # quantized while loading: stored there already
                store_embeddings(model, embedding_dtype)
            for m in quantized:
                have = {k: getattr(m, k) for k in want}
                if have != want:
                    raise ConfigError(
                        f"the model is already quantized with {have}, not with this qlora "
                        f"config's {want}; load it with the config's settings"
                    )
        self.lora.config.targets = targets
        self.model = self.lora.inject(model)
        return self.model
