"""Toolformer-style data (Schick et al., 2023): let the model's own loss decide where a tool
call helps, and keep only those calls.

    text x ──► positions i where the model most expects a call (p("[") after x<i, top k)
           ──► candidate calls c at i: sampled from the model after a few-shot prompt
               + x<i + "[name(", and proposed from the numbers of x<i (arithmetic)
           ──► execute: r = tool(c)      (a call that fails is dropped)
           ──► filter:  L(z) = Σ_t w_t · −log p(x_{i+t} | z, x<i, x_i..x_{i+t-1})
                        L⁺ = L([c → r]),  L⁻ = min(L(ε), L([c]))
                        keep c when L⁻ − L⁺ ≥ τ         w_t ∝ max(0, 1 − decay·t)

As in the paper, the call z is given as a prefix of the text ("[calculator(4732 - 1298)
→ 3434] " + x), not inserted at i: the model has never seen calls inside text yet. The
tool is any Tool whose arguments are one string (the calculator's expression, a lookup's
query). The kept calls become function-calling training data (see lmforge/lab/tools.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from lmforge.model.generate import SamplingConfig, generate
from lmforge.tokenizer import Tokenizer
from lmforge.tools.registry import Tool, Toolbox, ToolCall

NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class ToolformerConfig:
    positions: int = 2  # k: positions kept per text, by the model's probability of a call
    samples: int = 2  # m: calls sampled from the model per position
    threshold: float = 0.5  # τ: keep a call when it lowers the weighted loss by this (nats)
    decay: float = 0.2  # loss weights w_t ∝ max(0, 1 − decay·t) over the following tokens
    call_tokens: int = 24  # most tokens of one sampled call
    temperature: float = 1.0  # sampling temperature of the calls
    seed: int = 0  # sampling seed


@dataclass
class Candidate:
    text: int  # index of the text
    position: int  # character offset in the text where the call belongs
    argument: str  # the call's one string argument
    result: str | None  # what the tool returned; None when the call failed
    source: str  # "model" (sampled) or "proposed"
    loss_plus: float = 0.0  # L([c → r])
    loss_minus: float = 0.0  # min(L(ε), L([c]))

    @property
    def gain(self) -> float:
        return self.loss_minus - self.loss_plus


def api_text(tool: Tool, argument: str, result: str | None = None) -> str:
    """The call as text: "[calculator(4732 - 1298) → 3434]", or without "→ result"."""
    return f"[{tool.name}({argument})" + (f" → {result}]" if result is not None else "]")


def _argument_name(tool: Tool) -> str:
    names = [
        n for n, s in tool.parameters.get("properties", {}).items() if s.get("type") == "string"
    ]
    if len(names) != 1:
        raise ValueError(f"Toolformer data needs a tool with one string argument, not {tool.name}")
    return names[0]


def execute(tool: Tool, argument: str) -> str | None:
    result = Toolbox([tool]).call(ToolCall(tool.name, {_argument_name(tool): argument}))
    return None if result.error else result.content


def loss_weights(n: int, decay: float) -> list[float]:
    raw = [max(0.0, 1.0 - decay * t) for t in range(n)]
    return [w / sum(raw) for w in raw if w > 0]


@torch.inference_mode()
def weighted_losses(
    model: nn.Module,
    rows: Sequence[tuple[list[int], list[int]]],
    weights: list[float],
    batch: int = 16,
    progress: bool = False,
) -> list[float]:
    """Σ_t w_t · −log p(continuation_t | context, continuation_<t), per (context, continuation)."""
    out = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda j: len(rows[j][0]) + len(rows[j][1]))
    device = next(model.parameters()).device
    starts = range(0, len(order), batch)
    for start in tqdm(starts, desc="Toolformer filter", unit="batch", disable=not progress):
        chunk = order[start : start + batch]
        seqs = [rows[j][0] + rows[j][1][: len(weights)] for j in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        logp = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = logp.log_softmax(-1)  # (B, T, V)
        for r, j in enumerate(chunk):
            context, continuation = rows[j][0], rows[j][1][: len(weights)]
            at = torch.arange(len(context) - 1, len(context) - 1 + len(continuation))
            nll = -logp[r, at, torch.tensor(continuation)]  # (n,)
            out[j] = float((nll * torch.tensor(weights[: len(continuation)])).sum())
    return out


def filter_calls(
    model: nn.Module,
    tokenizer: Tokenizer,
    tool: Tool,
    texts: Sequence[str],
    candidates: Sequence[Candidate],
    config: ToolformerConfig,
    progress: bool = False,
) -> list[Candidate]:
    """Fill each candidate's losses; return those that lower the loss by the threshold."""
    weights = loss_weights(64, config.decay)
    live = [c for c in candidates if c.result is not None]
    spots = sorted({(c.text, c.position) for c in live})
    rows = []
    for t, i in spots:  # L(ε): no call
        rows.append((tokenizer.encode(texts[t][:i]), tokenizer.encode(texts[t][i:])))
    for c in live:
        before, after = (
            tokenizer.encode(texts[c.text][: c.position]),
            tokenizer.encode(texts[c.text][c.position :]),
        )
        for result in (None, c.result):
            prefix = tokenizer.encode(api_text(tool, c.argument, result) + " ")
            rows.append((prefix + before, after))
    losses = weighted_losses(model, rows, weights, progress=progress)
    plain = dict(zip(spots, losses[: len(spots)]))
    for k, c in enumerate(live):
        without, with_result = losses[len(spots) + 2 * k : len(spots) + 2 * k + 2]
        c.loss_minus = min(plain[(c.text, c.position)], without)
        c.loss_plus = with_result
    return [c for c in live if c.gain >= config.threshold]


# --- where calls go, and which -------------------------------------------------------------


@torch.inference_mode()
def call_positions(
    model: nn.Module, tokenizer: Tokenizer, prompt: str, text: str, k: int, opener: str = " ["
) -> list[int]:
    """The k character offsets of `text` (token boundaries) after which the model, having
    read `prompt`, gives the call opener its highest probability; in text order."""
    head, pieces = tokenizer.encode(prompt), tokenizer.encode(text)
    start = tokenizer.encode(opener)[0]
    logits = model(input_ids=torch.tensor([head + pieces])).logits[0].float()  # (T, V)
    before = logits[len(head) : len(head) + len(pieces) - 1].softmax(-1)[:, start]  # pieces 1..
    best = before.argsort(descending=True)[:k].tolist()
    return sorted(len(tokenizer.decode(pieces[: j + 1])) for j in best)


def sample_calls(
    model: nn.Module,
    tokenizer: Tokenizer,
    tool: Tool,
    prompt: str,
    texts: Sequence[str],
    config: ToolformerConfig,
    progress: bool = False,
) -> list[Candidate]:
    """m sampled calls at each of the k best positions of every text (see the docstring)."""
    sampling = SamplingConfig(
        max_new_tokens=config.call_tokens,
        temperature=config.temperature,
        seed=config.seed,
        stop=[")]", ") →", "]", "\n"],
    )
    out = []
    for t, text in enumerate(tqdm(texts, desc="sampling calls", disable=not progress)):
        spots = call_positions(model, tokenizer, prompt, text, config.positions)
        heads = [tokenizer.encode(prompt + text[:i] + f" [{tool.name}(") for i in spots]
        rows = [h for h in heads for _ in range(config.samples)]
        for r, gen in enumerate(generate(model, rows, sampling, decode=tokenizer.decode)):
            argument = (gen.text or "").strip().removesuffix(")").strip()
            if argument:
                i = spots[r // config.samples]
                out.append(Candidate(t, i, argument, execute(tool, argument), "model"))
    return out


def propose_calls(tool: Tool, texts: Sequence[str]) -> list[Candidate]:
    """Arithmetic proposals before every number that follows "=": the equation's own left
    side, and the other operations on its two last numbers (which the filter should drop)."""
    out = []
    for t, text in enumerate(texts):
        for match in re.finditer(r"=(?=\s*\d)", text):
            i = match.end()  # just after "=": the number (with its space) follows
            left = text[: match.start()].rsplit(".", 1)[-1].strip()
            numbers = NUMBER.findall(left)
            options = [left] if left else []
            if len(numbers) >= 2:
                a, b = numbers[-2:]
                options += [f"{a} {op} {b}" for op in "+-*"]
            for argument in dict.fromkeys(options):
                out.append(Candidate(t, i, argument, execute(tool, argument), "proposed"))
    return out
