"""lm-evaluation-harness can evaluate lmforge models: `LmforgeLM` is its `LM` interface.

    import lm_eval
    from lmforge.eval.lm_eval_adapter import LmforgeLM
    lm_eval.simple_evaluate(model=LmforgeLM("smollm2-135m-instruct"), tasks=[...])

or, once this module is imported, `--model lmforge --model_args pretrained=NAME,adapter=DIR`.
The three request types map onto lmforge's own scorers:

    loglikelihood(context, continuation)  → eval/loglik.py loglikelihoods (logprob, greedy)
    loglikelihood_rolling(text)           → eval/ppl.py perplexity: Σ log p over the text's
                                            tokens after the first, in context-sized windows
    generate_until(context, {until, max_gen_toks, temperature, do_sample})
                                          → model/generate.py, stop strings = `until`

The harness is an optional extra (`pip install lmforge[harness]`); its tasks download their
datasets from the Hugging Face hub, which needs a network.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from lmforge.eval.generation import stop_ids
from lmforge.eval.loglik import Request, loglikelihoods
from lmforge.eval.ppl import perplexity
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig, generate
from lmforge.peft import load_adapter


@register_model("lmforge")
class LmforgeLM(LM):
    """An embedded model or transformers directory (native or hf backend), optionally with a
    delta (a finetune run directory, a delta directory or a peft adapter)."""

    def __init__(
        self,
        pretrained: str = "smollm2-135m-instruct",
        backend: str = "native",
        adapter: str = "",
        batch_size: int | str = 8,
        max_length: int = 0,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.model = model if model is not None else load_model(pretrained, backend=backend)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(pretrained)
        if adapter:
            self.model = load_adapter(adapter, self.model).model
        self.model.eval()
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        asked = [Request(*r.args) for r in requests]
        scores = loglikelihoods(
            self.model,
            self.tokenizer,
            asked,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=not disable_tqdm,
        )
        return [(s.logprob, s.greedy) for s in scores]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        out = []
        for r in tqdm(requests, desc="rolling log-likelihood", disable=disable_tqdm):
            ppl = perplexity(self.model, self.tokenizer, [r.args[0]], max_length=self.max_length)
            out.append(-ppl.nll * ppl.tokens)
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in tqdm(requests, desc="generate", disable=disable_tqdm):
            context, kwargs = r.args
            until = kwargs.get("until", [])
            config = SamplingConfig(
                max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                temperature=float(kwargs.get("temperature", 0.0))
                if kwargs.get("do_sample", False)
                else 0.0,
                stop=[until] if isinstance(until, str) else list(until),
            )
            (result,) = generate(
                self.model,
                [self.tokenizer.encode(context)],
                config,
                eos_token_id=stop_ids(self.tokenizer),
                decode=self.tokenizer.decode,
                truncate=True,
            )
            out.append(result.text or "")
        return out
