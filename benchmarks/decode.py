"""Decoding speed: lmforge's generate on the native model against transformers' generate.

Both sides load SmolLM2-135M-Instruct from the same converted cache (fp32, CPU), read the
same chat-formatted prompts (8 English requests of different lengths; left padding at
batch 8 on both sides) and decode greedily for a fixed number of new tokens, with EOS
stopping off on both sides so that both do the same work. In one process run:

    new tokens/s = batch · new tokens / seconds of one whole generate call
    TTFT         = seconds of a generate call for one new token (prefill + first token)
    identical    = the generated token ids agree position by position

Measurement alternates the two contenders (ABBA order, a warmup call each first) and
reports medians; speed ratios are medians of adjacent-pair ratios, so that a burst of load
from elsewhere, which slows both calls of a pair, cancels out. At batch 1 the runs cycle
through the 8 prompts. A per-token breakdown shows where a decode step's time goes on each
side: the weight matmuls and the attention kernel (torch.profiler self times), and the rest
(small tensor ops, Python and dispatch).

Usage: python benchmarks/decode.py [--new-tokens 64] [--repeats 8] [--threads 2]
It prints a table and rewrites the "## Decoding" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch import nn

from lmforge.chat import chat_format
from lmforge.model.generate import SamplingConfig, generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pair_ratio, publish  # noqa: E402

SECTION = "## Decoding"
REQUESTS = [
    "Hi!",
    "What is the capital of France?",
    "Give me three tips for staying focused while working from home.",
    "Explain in simple words why the sky is blue during the day and red at sunset.",
    "Write a short poem about a cat who watches the rain from a window on a quiet "
    "Sunday afternoon, and make it rhyme.",
    "I am planning a trip to Japan in the spring. I like history, gardens and good food, "
    "and I have ten days. Suggest an itinerary that is not too rushed, with a few words "
    "on each stop.",
    "Summarise the following paragraph in one sentence: The printing press, developed by "
    "Johannes Gutenberg around 1440, made books far cheaper to produce. Ideas spread "
    "faster than ever before, literacy rose across Europe, and scholars could compare and "
    "correct texts with an ease that hand-copied manuscripts never allowed.",
    "My Python program reads a large CSV file line by line, converts every row into a "
    "dictionary and appends it to a list, then sorts the list by date and writes it back "
    "out. It is slow and uses a lot of memory when the file has millions of rows. What "
    "would you change, and why? Please be concrete and keep the answer short.",
]

# A contender continues a batch of prompts (token ids) by n tokens; returns the new ids.
Runner = Callable[[list[list[int]], int], list[list[int]]]


def lmforge_runner(model: nn.Module, pad: int) -> Runner:
    def run(prompts: list[list[int]], n: int) -> list[list[int]]:
        config = SamplingConfig(max_new_tokens=n, temperature=0.0)
        results = generate(model, prompts, config, eos_token_id=None, pad_token_id=pad)
        return [r.token_ids for r in results]

    return run


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask (B, L) with the real tokens flush right."""
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def transformers_runner(model: nn.Module, pad: int) -> Runner:
    @torch.inference_mode()
    def run(prompts: list[list[int]], n: int) -> list[list[int]]:
        ids, mask = left_pad(prompts, pad)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=None,  # never stop early: both sides produce n tokens per row
            pad_token_id=pad,
        )
        return out[:, ids.shape[1] :].tolist()  # (B, n)

    return run


@dataclass
class Timings:
    total: list[float] = field(default_factory=list)  # seconds of a whole n-token call
    ttft: list[float] = field(default_factory=list)  # seconds of a one-token call
    outputs: dict[int, list[list[int]]] = field(default_factory=dict)  # prompt set → ids


def timed(run: Runner, prompts: list[list[int]], n: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    out = run(prompts, n)
    return time.perf_counter() - start, out


def measure(
    runners: dict[str, Runner], prompt_sets: list[list[list[int]]], n: int, repeats: int
) -> dict[str, Timings]:
    """Alternate the contenders ABBA; run i reads prompt set i mod len(prompt_sets)."""
    names = list(runners)
    for name in names:  # warmup: allocator, kernels, lazy imports
        runners[name](prompt_sets[0], 4)
    timings = {name: Timings() for name in names}
    for i in range(repeats):
        k = i % len(prompt_sets)
        for name in names if i % 2 == 0 else names[::-1]:
            run, t = runners[name], timings[name]
            seconds, out = timed(run, prompt_sets[k], n)
            t.total.append(seconds)
            t.outputs.setdefault(k, out)
            t.ttft.append(timed(run, prompt_sets[k], 1)[0])
    return timings


def compare(ours: list[list[int]], reference: list[list[int]]) -> tuple[int, int, list[int]]:
    """(identical positions, all positions, first mismatch per differing row (-1: none))."""
    same = total = 0
    first = []
    for a, b in zip(ours, reference):
        hits = [x == y for x, y in zip(a, b)]
        same, total = same + sum(hits), total + max(len(a), len(b))
        first.append(hits.index(False) if not all(hits) else -1)
    return same, total, first


# --- where a decode step's time goes ---------------------------------------------------------

MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::mv", "aten::addmv", "aten::baddbmm")


def op_kind(name: str, shapes: list, head_numel: int) -> str:
    if name in MATMUL_OPS:
        big = any(s and torch.Size(s).numel() >= head_numel for s in shapes)
        return "lm_head matmul" if big else "block matmuls"
    if "scaled_dot_product" in name or "attention" in name:
        return "attention kernel"
    return "other operators"


def profile_kinds(
    run: Runner, prompts: list[list[int]], n: int, head_numel: int
) -> dict[str, float]:
    """Seconds of operator self time by kind for one call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run(prompts, n)
    kinds: dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        kind = op_kind(event.key, event.input_shapes or [], head_numel)
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    return kinds


def breakdown(
    runners: dict[str, Runner], prompts: list[list[int]], head_numel: int, rounds: int = 3
) -> str:
    """Milliseconds per decode step: (a call for 1 + k tokens − a call for 1 token) / k.

    The step itself comes from plain calls; the kernels' shares from the same calls under
    torch.profiler (operator self time). Plain and profiled calls alternate over `rounds`
    and the contenders ABBA; medians. The rest of the step is everything else: small
    tensor ops, Python and dispatch."""
    k = 16
    kinds = ["block matmuls", "lm_head matmul", "attention kernel"]
    steps: dict[str, list[float]] = {name: [] for name in runners}
    shares: dict[str, dict[str, list[float]]] = {name: {c: [] for c in kinds} for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            run = runners[name]
            one, more = timed(run, prompts, 1)[0], timed(run, prompts, 1 + k)[0]
            steps[name].append((more - one) / k * 1e3)
            one_p, more_p = (profile_kinds(run, prompts, n, head_numel) for n in (1, 1 + k))
            for kind in kinds:
                shares[name][kind].append((more_p.get(kind, 0) - one_p.get(kind, 0)) / k * 1e3)
    lines = [
        f"| batch {len(prompts)}: ms per new token | decode step | "
        + " | ".join(kinds)
        + " | everything else (small ops, Python, dispatch) |",
        "|---|" + "---:|" * (len(kinds) + 2),
    ]
    for name in names:
        step = statistics.median(steps[name])
        ms = [statistics.median(shares[name][kind]) for kind in kinds]
        cells = " | ".join(f"{m:.1f}" for m in ms)
        lines.append(f"| {name} | {step:.1f} | {cells} | {step - sum(ms):.1f} |")
    return "\n".join(lines)


# --- report ------------------------------------------------------------------------------


def speed_table(results: dict[int, dict[str, Timings]], n: int, reference: str) -> str:
    lines = [
        "| batch | contender | new tokens/s | ms per call | TTFT ms | tokens/s vs "
        f"{reference} | TTFT vs {reference} |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for batch, timings in results.items():
        ref = timings[reference]
        for name, t in timings.items():
            seconds, ttft = statistics.median(t.total), statistics.median(t.ttft)
            lines.append(
                f"| {batch} | {name} | {batch * n / seconds:.1f} | {seconds * 1e3:,.0f} | "
                f"{ttft * 1e3:.0f} | {pair_ratio(ref.total, t.total):.2f}x | "
                f"{pair_ratio(ref.ttft, t.ttft):.2f}x |"
            )
    return "\n".join(lines)


def identity_report(results: dict[int, dict[str, Timings]], ours: str, reference: str) -> str:
    lines = []
    for batch, timings in results.items():
        mine, theirs = timings[ours].outputs, timings[reference].outputs
        same = total = 0
        mismatches = []
        for k in sorted(mine):
            s, t, first = compare(mine[k], theirs[k])
            same, total = same + s, total + t
            for row, pos in enumerate(first):
                if pos >= 0:
                    prompt = k if batch == 1 else row
                    mismatches.append(f"prompt {prompt} from new token {pos}")
        verdict = "identical" if same == total else f"{same / total:.1%} identical"
        where = f" (first mismatch: {', '.join(mismatches)})" if mismatches else ""
        lines.append(f"- batch {batch}: token ids {verdict}, {same}/{total} tokens{where}.")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or directory")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per row and call")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], choices=range(1, 9))
    p.add_argument("--repeats", type=int, default=8, help="measured calls per contender")
    p.add_argument("--threads", type=int, default=2, help="torch threads (this machine: 2)")
    p.add_argument("--no-profile", action="store_true", help="skip the per-token breakdown")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return p.parse_args()


def main() -> None:
    from lmforge.hub import load_model, load_tokenizer

    args = parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    native = load_model(args.model, backend="native").eval()
    reference = load_model(args.model, backend="hf").eval()
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    prompts = [
        tokenizer.encode(chat_format([{"role": "user", "content": r}], tokenizer)) for r in REQUESTS
    ]
    runners = {
        "lmforge": lmforge_runner(native, pad),
        "transformers": transformers_runner(reference, pad),
    }
    results = {}
    for batch in args.batch_sizes:
        sets = [[p] for p in prompts] if batch == 1 else [prompts[:batch]]
        results[batch] = measure(runners, sets, args.new_tokens, args.repeats)
        print(f"batch {batch}: done", flush=True)
    table = speed_table(results, args.new_tokens, "transformers")
    identity = identity_report(results, "lmforge", "transformers")
    lengths = sorted(len(p) for p in prompts)
    setup = (
        f"SmolLM2-135M-Instruct ({native.num_parameters() / 1e6:.0f}M parameters), fp32, greedy, "
        f"{args.new_tokens} new tokens per row with EOS stopping off on both sides; "
        f"{len(prompts)} chat-formatted English prompts of {lengths[0]}–{lengths[-1]} tokens "
        "(batch 1 cycles through them; batch 8 holds all of them, left-padded on both sides); "
        "lmforge: `lmforge.model.generate.generate` on the native model; transformers: "
        "`model.generate(do_sample=False, eos_token_id=None)`; "
        f"{args.repeats} measured calls each after one warmup, alternating ABBA; medians; "
        "ratios = median over call pairs of (transformers time / lmforge time); TTFT = a call "
        f"for one new token (prefill + first token); {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}."
    )
    body = f"{table}\n\n{identity}\n\n{setup}"
    if not args.no_profile:
        head_numel = native.lm_head.weight.numel()
        parts = [breakdown(runners, prompts[:b], head_numel) for b in args.batch_sizes]
        body += (
            "\n\nWhere a decode step's time goes (16 decode steps: a call for 17 new tokens "
            "minus a call for 1; kernel shares are torch.profiler self times of the same calls "
            "profiled; medians of 3 alternating rounds):\n\n" + "\n\n".join(parts)
        )
    publish(SECTION, body, "benchmarks/decode.py", write=not args.no_write)


if __name__ == "__main__":
    main()
