"""P-tuning (Liu et al., 2021, "GPT Understands, Too"): continuous prompts from a prompt encoder.

A template mixes P trainable pseudo tokens [P] with the input, e.g.

    "[P][P][P] {input} [P][P] {output}"

The pseudo tokens' embeddings h₀..h_{P-1} are not free parameters: a prompt encoder makes
them depend on each other (the paper: a bidirectional LSTM, then a two-layer ReLU MLP):

    E (P, d) ─► BiLSTM(d → 2·hidden) ─► Linear(2h, 2h) ─► ReLU ─► Linear(2h, d) ─► h (P, d)

Only E and the encoder train; the model stays frozen. Like prefix-tuning's MLP, the encoder
is a training device: `fold()` computes h once and drops it, and `save()` writes h (which is
also all that peft stores for P-tuning). `encoder` = "mlp" is peft's alternative (three
linear layers with ReLU), "none" trains h directly (what a folded prompt is).

Where the pseudo tokens go — two ways to say it:

  template            "[P]…[P] {input} [P]…[P] {output}", only [P], {input} and {output}
                      (whitespace between them is ignored; {output}, if written, comes last).
                      The [P]s before {input} are read before the input; those after it are
                      read between input and output: before each row's first target token
                      (first label != -100), or after the whole prompt at generation (no
                      labels: the prompt is the input, the continuation is the output).
                      No template = all P before the input (peft's P-tuning).
  placeholder_token_id the caller writes the template with a token of its own: each row of
                      input_ids holds exactly P occurrences of this id, and the i-th one reads
                      pseudo token i in place (nothing is inserted; labels there are ignored).

At initialisation the encoder's random pseudo tokens already change the output
(identity_at_init is False).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError, DataError
from lmforge.model.host import Geometry, float_placement
from lmforge.model.loss import IGNORE_INDEX
from lmforge.peft.base import register
from lmforge.peft.virtual import (
    Call,
    InsertTokens,
    LstmEncoder,
    PromptEncoder,
    VirtualTokenMethod,
    VirtualTokenModel,
    relu_mlp,
)
from lmforge.registry import Registry

TEMPLATE_PART = re.compile(r"\s*(\[P\]|\{input\}|\{output\})")


def parse_template(template: str) -> tuple[int, int]:
    """(pseudo tokens before {input}, pseudo tokens between {input} and {output})."""
    parts, end = [], 0
    for match in TEMPLATE_PART.finditer(template):
        if match.start() != end:
            break
        parts.append(match.group(1))
        end = match.end()
    rest = template[end:]
    if rest.strip():
        raise ConfigError(
            f"ptuning.template {template!r}: cannot read {rest.strip()[:20]!r}; write only [P], "
            "{input} and {output} (put literal words in your input text)"
        )
    if parts.count("{input}") != 1 or parts.count("{output}") > 1:
        raise ConfigError(
            f"ptuning.template {template!r} needs {{input}} once, {{output}} at most once"
        )
    if "{output}" in parts and parts[-1] != "{output}":
        raise ConfigError(
            f"ptuning.template {template!r}: {{output}} must come last (a causal model cannot "
            "read pseudo tokens after the text it generates)"
        )
    cut = parts.index("{input}")
    return parts[:cut].count("[P]"), parts[cut:].count("[P]")


# A prompt encoder: (d, hidden, LSTM layers, dropout) -> module (P, d) -> (P, d); None = direct.
ENCODERS: Registry[Callable[[int, int, int, float], nn.Module | None]] = Registry(
    "P-tuning prompt encoder"
)
ENCODERS.add("lstm", LstmEncoder)
ENCODERS.add("mlp", relu_mlp)
ENCODERS.add("none", lambda width, hidden, layers, dropout: None)


@dataclass
class ReplacePlaceholders:
    """Input level, in place: the i-th `token_id` of each row reads virtual row i (P-tuning's
    template written with a placeholder token). Nothing is inserted, so nothing shifts."""

    token_id: int
    rows: int
    extra: int = 0

    def prefill(
        self, model: VirtualTokenModel, rows: Tensor, call: Call
    ) -> tuple[Any, Tensor | None]:
        if call.input_ids is None:
            raise DataError("placeholder P-tuning finds its placeholders in input_ids; pass them")
        embeds = model.get_input_embeddings()(call.input_ids)  # (B, T, d)
        hits = (call.input_ids == self.token_id) & call.mask(embeds.device).bool()  # (B, T)
        counts = hits.sum(-1)
        bad = (counts != self.rows).nonzero()
        if len(bad):
            row = int(bad[0, 0])
            raise DataError(
                f"row {row} holds {int(counts[row])} placeholder tokens (id {self.token_id}); "
                f"P-tuning needs exactly num_virtual_tokens={self.rows} in every row"
            )
        index = (hits.cumsum(-1) - 1).clamp(min=0)  # (B, T): which virtual row
        x = torch.where(hits[..., None], rows.to(embeds.dtype)[index], embeds)
        labels = call.labels
        if labels is not None:
            labels = labels.masked_fill(hits, IGNORE_INDEX)
        new = dataclasses.replace(call, input_ids=None, inputs_embeds=x, labels=labels)
        return model.call_base(new), None


@dataclass
class PTuningConfig:
    num_virtual_tokens: int = 20  # P, pseudo tokens in all
    template: str | None = None  # e.g. "[P][P][P] {input} [P][P] {output}"; None = all before
    placeholder_token_id: int | None = None  # or: the id that marks pseudo tokens in input_ids
    encoder: str = "lstm"  # lstm (the paper) | mlp (peft's default) | none (direct, folded)
    hidden: int = 0  # encoder width; 0 = the model's width d
    lstm_layers: int = 2  # layers of the bidirectional LSTM
    dropout: float = 0.0  # dropout between LSTM layers

    def validate(self) -> None:
        P = self.num_virtual_tokens
        if P <= 0:
            raise ConfigError(f"ptuning.num_virtual_tokens must be positive, got {P}")
        if self.encoder not in ENCODERS:
            raise ConfigError(
                f"ptuning.encoder {self.encoder!r} is unknown; choose from {ENCODERS.names()}"
            )
        if self.hidden < 0 or self.lstm_layers <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(
                "ptuning: hidden must be >= 0 (0 = model width), lstm_layers >= 1, "
                f"dropout in [0, 1); got {self.hidden}, {self.lstm_layers}, {self.dropout}"
            )
        if self.template is not None and self.placeholder_token_id is not None:
            raise ConfigError(
                "ptuning: give a template or a placeholder_token_id, not both (the placeholder "
                "marks the template's [P]s in your own text)"
            )
        if self.template is not None and sum(parse_template(self.template)) != P:
            raise ConfigError(
                f"ptuning.template {self.template!r} holds {sum(parse_template(self.template))} "
                f"[P], but num_virtual_tokens is {P}; make them agree"
            )

    def split(self) -> tuple[int, int]:
        """(before the input, between input and output)."""
        return (
            (self.num_virtual_tokens, 0) if self.template is None else parse_template(self.template)
        )


@register
class PTuning(VirtualTokenMethod):
    """Pseudo tokens from a prompt encoder, at template positions; the model stays frozen."""

    name = "ptuning"
    Config = PTuningConfig
    FOLDED = {"encoder": "none"}

    def build_wrapper(self, model: nn.Module, geometry: Geometry) -> VirtualTokenModel:
        c = self.config
        d = geometry.width
        device, dtype = float_placement(model.get_input_embeddings())
        with torch.device(device):
            transform = ENCODERS.get(c.encoder)(d, c.hidden or d, c.lstm_layers, c.dropout)
            encoder = PromptEncoder(torch.randn(c.num_virtual_tokens, d), transform).to(dtype)
        vocab = model.get_input_embeddings().num_embeddings
        if c.placeholder_token_id is not None and not 0 <= c.placeholder_token_id < vocab:
            raise ConfigError(
                f"ptuning.placeholder_token_id={c.placeholder_token_id} is outside the "
                f"vocabulary 0..{vocab - 1}"
            )
        if c.placeholder_token_id is not None:
            insertion = ReplacePlaceholders(c.placeholder_token_id, c.num_virtual_tokens)
        else:
            before, between = c.split()
            insertion = InsertTokens(before, between)
        return VirtualTokenModel(model, encoder, insertion)
