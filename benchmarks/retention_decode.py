"""Decoding one token after a long context: RetNet's recurrent state against a KV cache.

A RetNet (model.mixer=retention) and a transformer of the same shape (d_model, layers,
heads; plain multi-head attention, as in the RetNet paper; the RetNet's FFN is narrowed so
that the parameter counts match) decode one new token after contexts of 256 to 8,192 tokens:

    latency  = median seconds of one decode step (batch 1, the new token's logits), the two
               models alternating ABBA; the context is in the cache already (filled with random
               keys/values or a random state: a step's cost does not depend on their values)
    memory   = bytes of the decoding state: the KV cache (2 · layers · heads · head_dim · context
               floats) or the retention states (layers · heads · head_dim² floats)

The claim (Sun et al., 2023): retention decodes in O(1) time and memory per token, so its
latency and memory stay flat in the context while the transformer's grow (8.4x faster and
70% less memory at 8k on a 6.7B model). Target here: RetNet growth ≤ 10% from 256 to 8,192.

Usage: python benchmarks/retention_decode.py [--steps 30] [--threads 2]
It prints a table and rewrites the "## Retention decoding" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from lmforge.model import CausalLM, ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure, update_section  # noqa: E402

SECTION = "## Retention decoding"
CONTEXTS = [256, 512, 1024, 2048, 4096, 8192]
SHAPE = dict(vocab_size=4096, d_model=512, n_layer=6, n_head=8, n_kv_head=8, max_seq_len=8320)


def models() -> dict[str, CausalLM]:
    torch.manual_seed(0)
    transformer = CausalLM(ModelConfig(**SHAPE)).eval()
    # Retention has a fifth d×d matrix (the gate): 3·d·Δd_ff = d² keeps the parameters equal.
    narrower = transformer.config.d_ff - SHAPE["d_model"] // 3
    retnet = CausalLM(ModelConfig(**SHAPE, mixer="retention", d_ff=narrower)).eval()
    return {"transformer": transformer, "retnet": retnet}


def filled_cache(model: CausalLM, context: int):
    """A cache that holds `context` tokens (random contents: they do not change a step's cost)."""
    cache = model.new_cache(1, context + 1)
    g = torch.Generator().manual_seed(context)
    for store in (
        getattr(cache, "keys", []),
        getattr(cache, "values", []),
        getattr(cache, "states", []),
    ):
        for buf in store:
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
    cache.length = context
    return cache


def state_bytes(cache) -> int:
    """Bytes the decoding state holds for its context (KV buffers up to the length)."""
    if hasattr(cache, "states"):
        return sum(s.numel() * s.element_size() for s in cache.states)
    per_token = sum(k[:, :, :1].numel() * k.element_size() for k in cache.keys + cache.values)
    return per_token * cache.length


def stepper(model: CausalLM, cache, context: int):
    token = torch.tensor([[7]])
    position = torch.tensor([[context]])

    @torch.inference_mode()
    def step() -> None:
        model(token, position_ids=position, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.length = context  # the next step decodes after the same context again

    return step


def run(steps: int) -> list[dict]:
    contenders = models()
    rows = []
    for context in CONTEXTS:
        caches = {name: filled_cache(m, context) for name, m in contenders.items()}
        calls = {name: stepper(m, caches[name], context) for name, m in contenders.items()}
        times = measure(calls, n=steps, warmup=3)
        for name in contenders:
            ms = 1000 * statistics.median(times[name])
            rows.append(
                dict(context=context, model=name, ms=ms, mib=state_bytes(caches[name]) / 2**20)
            )
            print(
                f"context {context:5d}  {name:11s} {ms:7.2f} ms/token  {rows[-1]['mib']:8.2f} MiB"
            )
    return rows


def crossover(rows: list[dict]) -> str:
    ms = {(r["model"], r["context"]): r["ms"] for r in rows}
    faster = [c for c in CONTEXTS if ms["retnet", c] < ms["transformer", c]]
    if not faster:
        return "the transformer was faster at every context measured"
    if faster[0] == CONTEXTS[0]:
        return f"RetNet was faster already at {CONTEXTS[0]} tokens, the shortest context measured"
    before = CONTEXTS[CONTEXTS.index(faster[0]) - 1]
    return f"RetNet becomes the faster one between {before} and {faster[0]} tokens of context"


def report(rows: list[dict], steps: int) -> str:
    by = {(r["model"], r["context"]): r for r in rows}
    params = {name: m.num_parameters() for name, m in models().items()}
    head = "| context | transformer ms/token | RetNet ms/token | speed-up | transformer state MiB "
    lines = [head + "| RetNet state MiB |", "|---:|---:|---:|---:|---:|---:|"]
    for c in CONTEXTS:
        t, r = by["transformer", c], by["retnet", c]
        lines.append(
            f"| {c:,} | {t['ms']:.2f} | {r['ms']:.2f} | {t['ms'] / r['ms']:.2f}x | "
            f"{t['mib']:.2f} | {r['mib']:.2f} |"
        )
    growth = {
        name: by[name, CONTEXTS[-1]]["ms"] / by[name, CONTEXTS[0]]["ms"] - 1
        for name in ("transformer", "retnet")
    }
    memory = by["transformer", CONTEXTS[-1]]["mib"] / by["retnet", CONTEXTS[-1]]["mib"]
    speed = by["transformer", CONTEXTS[-1]]["ms"] / by["retnet", CONTEXTS[-1]]["ms"]
    target = "met" if growth["retnet"] <= 0.10 else "not met"
    lines += [
        "",
        f"Latency growth from {CONTEXTS[0]:,} to {CONTEXTS[-1]:,} tokens: RetNet "
        f"{100 * growth['retnet']:+.0f}%, transformer {100 * growth['transformer']:+.0f}% "
        f"(target: RetNet ≤ +10%, {target}); {crossover(rows)}. At {CONTEXTS[-1]:,} tokens the "
        f"RetNet decodes {speed:.2f}x "
        f"faster and its state is {memory:,.0f}x smaller (paper, 6.7B at 8k: 8.4x faster, "
        "-70% memory of the whole model).",
        "",
        f"d_model 512, 6 layers, 8 heads of 64, vocab 4096; transformer {params['transformer']:,} "
        f"parameters (multi-head attention, no grouping), RetNet {params['retnet']:,} (FFN "
        "narrowed to match); batch 1, fp32, one new token per step with its logits; "
        f"{steps} measured steps per context after 3 warmup, alternating ABBA, medians; "
        f"{torch.get_num_threads()} threads, {platform.machine()}, torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at the end (other work on the machine makes "
        "the times noisy, never the memory).",
        "",
        "Run: `python benchmarks/retention_decode.py`",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.steps)
    text = report(rows, args.steps)
    print(text)
    if not args.no_write:
        update_section(SECTION, text)


if __name__ == "__main__":
    main()
