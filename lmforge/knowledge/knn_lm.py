"""kNN-LM (Khandelwal et al., 2020): interpolate the model with nearest neighbours in a
datastore of its own hidden states over the documents.

    datastore   key = f(x_<t): the final hidden state (the final norm's output, what the
                head reads) at position t-1;  value = the token x_t that followed
    query       f(x) for the current context
    p_kNN(y|x)  ∝ Σ_{(k_i, v_i) ∈ kNN(f(x))} 1[v_i = y] · exp(−‖k_i − f(x)‖² / T)
    p(y|x)      = λ · p_kNN(y|x) + (1 − λ) · p_LM(y|x)

    input ─► model ─┬─► final norm ─► hidden (B, T, d) ──► k nearest keys ─► p_kNN (B, T, V)
                    └─► logits ─► softmax ─► p_LM ─────────────────────────────────┐
                                                  log(λ p_kNN + (1−λ) p_LM)  ◄──────┘

The hidden state is read with a forward hook on `model.model.norm`, the final norm of the
native decoder and of transformers' Llama family alike. KNNLM is itself called like a model
(its logits are log-probabilities), so perplexity (eval/ppl.py) measures it unchanged.
The paper's anchor: −2.9 perplexity on Wikitext-103 (18.65 → 15.81 for their 247M model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from lmforge.atomic import atomic_write
from lmforge.errors import ConfigError
from lmforge.eval.ppl import token_stream
from lmforge.model.host import host_for
from lmforge.tokenizer import Tokenizer


@contextlib.contextmanager
def hidden_states(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collects the final hidden state (B, T, d) of every forward call made inside."""
    seen: list[Tensor] = []
    handle = host_for(model).final_norm().register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


@dataclass
class Datastore:
    keys: Tensor  # (N, d) float32 hidden states
    values: Tensor  # (N,) long: the token that followed each state

    def save(self, path: str | Path) -> None:
        tensors = {"keys": self.keys.contiguous(), "values": self.values.contiguous()}
        atomic_write(Path(path), lambda p: save_file(tensors, str(p)))

    @classmethod
    def load(cls, path: str | Path) -> Datastore:
        tensors = load_file(str(path))
        return cls(tensors["keys"], tensors["values"])


@torch.inference_mode()
def build_datastore(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: Iterable[str],
    *,
    window: int = 512,
    max_tokens: int = 0,
    progress: bool = False,
) -> Datastore:
    """(hidden state, next token) for every token of the texts, in windows of `window`."""
    stream = token_stream(tokenizer, texts, max_tokens)
    device = next(model.parameters()).device
    keys, values = [], []
    with hidden_states(model) as seen:
        for s in tqdm(range(0, len(stream) - 1, window), "datastore", disable=not progress):
            piece = torch.tensor(stream[s : s + window + 1], device=device)
            model(input_ids=piece[None, :-1])
            keys.append(seen.pop()[0].float().cpu())  # (T, d)
            values.append(piece[1:].cpu())  # (T,)
    return Datastore(torch.cat(keys), torch.cat(values))


def knn_distribution(
    queries: Tensor, store: Datastore, vocab: int, k: int, temperature: float, block: int = 16384
) -> Tensor:
    """p_kNN (N, V) of queries (N, d): softmax(−d²/T) over the k nearest keys, per token."""
    q = queries.float()
    best_d = torch.full((len(q), 0), float("inf"))
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    q_sq = (q * q).sum(-1, keepdim=True)  # (N, 1)
    for start in range(0, len(store.keys), block):
        keys = store.keys[start : start + block]  # (M, d)
        d2 = q_sq - 2 * q @ keys.T + (keys * keys).sum(-1)  # (N, M) squared L2
        d = torch.cat([best_d, d2], dim=1)
        i = torch.cat([best_i, torch.arange(start, start + len(keys)).expand(len(q), -1)], dim=1)
        best_d, pick = d.topk(min(k, d.shape[1]), dim=1, largest=False)  # (N, k)
        best_i = i.gather(1, pick)
    weights = F.softmax(-best_d.clamp(min=0) / temperature, dim=-1)  # (N, k)
    p = torch.zeros(len(q), vocab)
    return p.scatter_add_(1, store.values[best_i], weights)  # (N, V)


class KNNLM(nn.Module):
    """A model whose next-token distribution is interpolated with a datastore's neighbours."""

    def __init__(
        self,
        model: nn.Module,
        store: Datastore,
        k: int = 16,
        lam: float = 0.25,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0 or k < 1 or temperature <= 0:
            raise ConfigError(
                f"kNN-LM needs 0 <= lam <= 1, k >= 1 and temperature > 0; "
                f"got lam={lam}, k={k}, temperature={temperature}"
            )
        self.model, self.store = model, store
        self.k, self.lam, self.temperature = k, lam, temperature

    def forward(self, input_ids: Tensor | None = None, labels: Tensor | None = None, **kwargs):
        with hidden_states(self.model) as seen:
            out = self.model(input_ids=input_ids, **kwargs)
        hidden = seen[-1]  # (B, T, d)
        B, T, V = out.logits.shape
        p_lm = out.logits.float().softmax(-1)  # (B, T, V)
        flat = hidden.reshape(B * T, -1).to("cpu")
        p_knn = knn_distribution(flat, self.store, V, self.k, self.temperature)
        p = self.lam * p_knn.view(B, T, V).to(p_lm.device) + (1 - self.lam) * p_lm
        logits = p.clamp(min=1e-30).log()  # log-probabilities: softmax(logits) = p
        loss = None
        if labels is not None:
            targets = labels[:, 1:].flatten()  # position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets, ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits, past_key_values=None)
