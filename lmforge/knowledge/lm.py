"""The language model as the knowledge package uses it: chat replies and yes/no judgements.

Any model lmforge loads works: prompts go through the model's own chat template
(`chat.chat_format`; ChatML for a native model without one) and decoding is greedy, so an
answer is reproducible. A judgement reads two label words' log-likelihoods
(`eval.loglik`), never parses free text:

    p(yes) = exp ℓ(" Yes") / (exp ℓ(" Yes") + exp ℓ(" No"))     after the templated prompt
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from lmforge.chat import chat_format, chat_stop_strings, chat_stop_tokens
from lmforge.eval.loglik import Request, context_length, loglikelihoods
from lmforge.model.generate import SamplingConfig, generate
from lmforge.tokenizer import Tokenizer


@dataclass
class LM:
    model: nn.Module
    tokenizer: Tokenizer
    batch_size: int = 4  # prompts decoded together

    @property
    def window(self) -> int:
        """Tokens the model reads at most (its context length)."""
        return context_length(self.model)

    def prompt(self, user: str, system: str = "") -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        return chat_format(messages, self.tokenizer)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def chat(self, users: Sequence[str], max_new_tokens: int = 128, system: str = "") -> list[str]:
        """The model's greedy reply to each user message (one turn each)."""
        return self.complete([self.prompt(u, system) for u in users], max_new_tokens)

    def complete(self, prompts: Sequence[str], max_new_tokens: int = 128) -> list[str]:
        """Greedy continuations of templated prompts, up to the end of the assistant's turn."""
        config = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=0.0, stop=chat_stop_strings(self.tokenizer)
        )
        ids = [self.tokenizer.encode(p) for p in prompts]
        replies: list[str] = []
        for start in range(0, len(ids), self.batch_size):
            results = generate(
                self.model,
                ids[start : start + self.batch_size],
                config,
                eos_token_id=chat_stop_tokens(self.tokenizer),
                pad_token_id=self.tokenizer.pad_id or 0,
                decode=self.tokenizer.decode,
                truncate=True,
            )
            replies += [(r.text or "").strip() for r in results]
        return replies

    def yes_probability(self, users: Sequence[str], system: str = "") -> list[float]:
        """p(" Yes") against p(" No") as the first word of the reply to each message."""
        contexts = [self.prompt(u, system) for u in users]
        requests = [Request(c, word) for c in contexts for word in ("Yes", "No")]
        lls = loglikelihoods(self.model, self.tokenizer, requests, batch_size=self.batch_size)
        out = []
        for i in range(len(contexts)):
            yes, no = lls[2 * i].logprob, lls[2 * i + 1].logprob
            out.append(1.0 / (1.0 + math.exp(no - yes)))
        return out
