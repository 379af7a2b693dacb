"""The trainable rows of the virtual-token methods and the networks that reparameterise them.

PromptEncoder    rows E (P, width_in) ─► transform ─► (P, width_out); without a
                 transform the rows are the prompt itself
tanh_mlp         prefix-tuning (Li & Liang): Linear → tanh → Linear
LstmEncoder      P-tuning (Liu et al.): bidirectional LSTM, then Linear → ReLU → Linear
relu_mlp         P-tuning's MLP option
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PromptEncoder(nn.Module):
    """The virtual rows (P, width): `transform(embedding)` while reparameterised, the
    embedding itself once folded (or for methods that train the rows directly)."""

    def __init__(self, init: Tensor, transform: nn.Module | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(init, freeze=False)  # (P, width_in)
        self.transform = transform

    def forward(self) -> Tensor:
        rows = self.embedding.weight  # (P, width_in)
        return rows if self.transform is None else self.transform(rows)  # (P, width_out)

    @torch.no_grad()
    def folded_rows(self) -> Tensor:
        """The rows as inference reads them (dropout off), detached. (P, width_out)"""
        was_training = self.training
        self.eval()
        rows = self().detach().clone()
        self.train(was_training)
        return rows

    def fold(self) -> None:
        """Compute the rows once and drop the transform."""
        if self.transform is not None:
            self.embedding = nn.Embedding.from_pretrained(self.folded_rows(), freeze=False)
            self.transform = None


def tanh_mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    """Li & Liang's reparameterisation: Linear → tanh → Linear."""
    return nn.Sequential(nn.Linear(width_in, hidden), nn.Tanh(), nn.Linear(hidden, width_out))


class LstmEncoder(nn.Module):
    """The paper's encoder: bidirectional LSTM, then Linear → ReLU → Linear."""

    def __init__(self, width: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.lstm_head = nn.LSTM(
            width, hidden, num_layers=layers, dropout=dropout, bidirectional=True, batch_first=True
        )
        self.mlp_head = nn.Sequential(
            nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, width)
        )

    def forward(self, rows: Tensor) -> Tensor:
        states, _ = self.lstm_head(rows[None])  # (1, P, 2·hidden): each row sees all others
        return self.mlp_head(states[0])  # (P, d)


def relu_mlp(width: int, hidden: int, layers: int, dropout: float) -> nn.Module:
    """P-tuning's MLP option: Linear → ReLU → Linear → ReLU → Linear, (P, d) → (P, d)."""
    return nn.Sequential(
        nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, width),
    )  # fmt: skip
