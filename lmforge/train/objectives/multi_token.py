"""Multi-token prediction (Gloeckle et al. 2024): n heads on one trunk, head j predicting the
token j positions ahead (the heads are model/mtp.py's):

    loss = (1/n) · Σ_{j=1..n} CE(head_j(h_t), x_{t+j})        labels of head j = labels ≪ j

Head 1 is the model's own next-token head, so inference and validation (the next-token
loss) use the model as it is. Each extra head costs one block and one pass through the
(fused) output layer per token; `flops_per_token` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, loss_only
from lmforge.model.mtp import attach_heads
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives.base import OBJECTIVES, ObjectiveKind
from lmforge.train.state import Batch
from lmforge.train.validation import default_objective


@dataclass
class MultiTokenOptions:
    n_future: int = 4  # tokens predicted at each position: t+1 (the model's head) .. t+n

    def validate(self) -> None:
        if self.n_future < 2:
            raise ConfigError(f"n_future must be at least 2 (1 is causal-lm), got {self.n_future}")


class MultiTokenPrediction:
    def __init__(self, model: CausalLM, n_future: int) -> None:
        self.heads = attach_heads(model, n_future)
        self.n_future = n_future
        self.validation = default_objective

    def head_losses(self, model: nn.Module, batch: Batch) -> list[Tensor]:
        """Head j's cross-entropy against labels shifted by j, for j = 1..n_future."""
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with loss_only(model):
            trunk = model.trunk(**inputs)
            losses = []
            for j in range(1, self.n_future + 1):
                hidden = model.model.norm(self.heads.hidden(trunk, j))  # (B, T, d)
                losses.append(model.head_loss(hidden, labels, shift=j))
        return losses

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        return sum(self.head_losses(model, batch)) / self.n_future

    def flops_per_token(self, model: CausalLM, seq_len: int) -> float:
        """Training FLOPs per token: the model's, plus per extra head one block and the head."""
        c, extra = model.config, self.n_future - 1
        block = sum(p.numel() for p in self.heads.blocks[0].parameters() if p.dim() == 2)
        trunk = model.flops_per_token(seq_len) - 3 * 2 * block * extra  # (it counts each once)
        per_head = 2 * block + 2 * seq_len * c.n_head * c.head_dim + 2 * c.vocab_size * c.d_model
        return trunk + 3 * per_head * extra


def _build(
    options: MultiTokenOptions, model: nn.Module, tokenizer: Tokenizer | None
) -> MultiTokenPrediction:
    if not isinstance(model, CausalLM):
        raise ConfigError(
            "multi-token prediction adds heads to a native model; this one is "
            f"{type(model).__name__}",
            fix="load it with {backend=native}, or keep {objective=causal-lm}",
        )
    return MultiTokenPrediction(model, options.n_future)


OBJECTIVES.add(
    "multi-token",
    ObjectiveKind(
        "heads predict tokens t+1..t+n (Gloeckle et al. 2024)", MultiTokenOptions, _build
    ),
)
