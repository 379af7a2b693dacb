"""VirtualTokenModel: a frozen causal LM that reads virtual tokens, called exactly like the
model itself; and VirtualTokenMethod, what the four virtual-token methods share."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write, atomic_write_json
from lmforge.errors import ConfigError
from lmforge.model.host import Geometry, host_for
from lmforge.peft.base import CONFIG_FILE, WEIGHTS_FILE, DeltaMethod, freeze
from lmforge.peft.virtual.encoder import PromptEncoder
from lmforge.peft.virtual.insert import Call, Insertion, shift_for_cache


@dataclass
class ClassificationOutput:
    loss: Tensor | None
    logits: Tensor  # (B, C) class logits
    past_key_values: Any = None


@contextlib.contextmanager
def captured_output(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect `module`'s outputs during the block (the final norm: the last hidden state)."""
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


class VirtualTokenModel(nn.Module):
    """A frozen causal LM that reads virtual tokens; called exactly like the model itself."""

    def __init__(
        self,
        base_model: nn.Module,
        prompt_encoder: PromptEncoder,
        insertion: Insertion,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.base_model = base_model
        self.prompt_encoder = prompt_encoder
        self.insertion = insertion
        self.head = head  # class logits over the last hidden state (P-tuning v2's option)
        self.host = host_for(base_model)
        self.train(base_model.training)  # a wrapper starts in its base's mode

    @property
    def num_virtual_tokens(self) -> int:
        """Columns the virtual tokens take in the sequence and the cache."""
        return self.insertion.extra

    @property
    def config(self) -> Any:
        """The base's config with the context shortened by the virtual columns, so that
        generation leaves them room."""
        return self.host.with_context(self.num_virtual_tokens)

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def call_base(self, call: Call) -> Any:
        kwargs = {self.host.cache_arg: call.past_key_values, **call.kwargs}
        if call.logits_to_keep:
            kwargs["logits_to_keep"] = call.logits_to_keep
        return self.base_model(
            input_ids=call.input_ids,
            inputs_embeds=call.inputs_embeds,
            attention_mask=call.attention_mask,
            position_ids=call.position_ids,
            labels=call.labels,
            use_cache=call.use_cache,
            **kwargs,
        )

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> Any:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        call = Call(
            input_ids, inputs_embeds, attention_mask, position_ids, past_key_values,
            labels, use_cache, logits_to_keep, kwargs,
        )  # fmt: skip
        if labels is not None and labels.dim() == 1:  # class ids (B,): the classification head
            logits = self._classify(call)
            return ClassificationOutput(F.cross_entropy(logits.float(), labels), logits)
        return self._run(call)[0]

    def _run(self, call: Call) -> tuple[Any, Tensor | None]:
        """The base's output with logits at the original positions, and the column map."""
        if self.host.cache_length(call.past_key_values) > 0:  # decoding: the prompt is cached
            step = shift_for_cache(call, self.num_virtual_tokens, call.past_key_values)
            return self.call_base(step), None
        out, cols = self.insertion.prefill(self, self.prompt_encoder(), call)
        if cols is not None and not call.logits_to_keep:
            out.logits = out.logits.gather(1, cols[..., None].expand(-1, -1, out.logits.shape[-1]))
        return out, cols

    def classify(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Class logits (B, C) from the final hidden state at each row's last real token."""
        return self._classify(Call(input_ids, inputs_embeds, attention_mask))

    def _classify(self, call: Call) -> Tensor:
        if self.head is None:
            raise ConfigError(
                "this model has no classification head; build P-tuning v2 with "
                "task='classification' and num_classes to classify"
            )
        plain = dataclasses.replace(call, labels=None, use_cache=False, logits_to_keep=0)
        with captured_output(self.host.final_norm()) as seen:
            _, cols = self._run(plain)
        hidden = seen[-1]  # (B, C, d)
        if cols is not None:
            hidden = hidden.gather(1, cols[..., None].expand(-1, -1, hidden.shape[-1]))  # (B,T,d)
        mask = call.mask(hidden.device)
        columns = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * (columns + 1)).argmax(-1)  # (B,): the last real token's column
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, d)
        return self.head(pooled.to(next(self.head.parameters()).dtype))  # (B, C)


# ─────────────────────────────────────────────────────────────────────── the methods


class VirtualTokenMethod(DeltaMethod):
    """What the four virtual-token methods share: apply wraps, fold drops a reparameterising
    encoder, save writes the folded rows (the prompt the model reads, as the papers keep)."""

    family = "addition"
    mergeable = False
    identity_at_init = False  # virtual tokens change the output from the first step
    FOLDED: ClassVar[dict[str, Any]] = {}  # config fields as they are once folded

    def build_wrapper(self, model: nn.Module, geometry: Geometry) -> VirtualTokenModel:
        raise NotImplementedError

    def inject(self, model: nn.Module) -> nn.Module:
        if isinstance(model, VirtualTokenModel):
            raise ConfigError(
                f"this model already reads virtual tokens ({type(model).__name__}); apply "
                f"{self.name} to a plain base model"
            )
        geometry = host_for(model).geometry()
        P = self.config.num_virtual_tokens
        if geometry.context <= P:
            raise ConfigError(
                f"{self.name}.num_virtual_tokens={P} is as long as the model's context of "
                f"{geometry.context} tokens, leaving no room for the input; use fewer"
            )
        freeze(model)
        self.geometry = geometry
        self.model = self.build_wrapper(model, geometry)
        return self.model

    @property
    def wrapper(self) -> VirtualTokenModel:
        if self.model is None:
            raise ConfigError(f"{self.name}: call apply(model) first")
        return self.model

    def fold(self) -> None:
        """Replace a reparameterising encoder by the rows it computes (no-op when direct)."""
        self.wrapper.prompt_encoder.fold()
        self.config = dataclasses.replace(self.config, **self.FOLDED)

    def folded_state(self) -> dict[str, Tensor]:
        """The method's tensors as fold() would leave them, without changing the model."""
        state = {n: p.detach() for n, p in self.trainable_parameters().items()}
        state = {n: t for n, t in state.items() if not n.startswith("prompt_encoder.")}
        state["prompt_encoder.embedding.weight"] = self.wrapper.prompt_encoder.folded_rows()
        return state

    def save(self, directory: str | Path) -> Path:
        """Write the folded rows and the folded config; the live model keeps its encoder,
        so saving in the middle of training changes nothing (call fold() to drop it)."""
        directory = Path(directory)
        tensors = {n: t.contiguous().cpu() for n, t in self.folded_state().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
        config = dataclasses.replace(self.config, **self.FOLDED)
        atomic_write_json(directory / CONFIG_FILE, self.meta(config))
        return directory

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())
