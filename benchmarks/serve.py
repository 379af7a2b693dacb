"""Serving: lmforge serve against a naive generate server and llama.cpp's server; and
quantized CPU decoding against llama.cpp.

Part 1, quantized decoding (SmolLM2-135M-Instruct, batch 1, greedy, one process):
    new tokens/s of lmforge's `generate` with fp32, int8 and 4-bit weights, and of llama.cpp
    (llama-cpp-python, the GGUF that `lmforge export --format gguf` writes, q8_0 and q4_0);
    greedy tokens of int8/int4 identical to fp32 on how many of the 8 prompts; perplexity on
    Shakespeare (first 16k tokens, windows of 512) for fp32, int8 and int4.
Part 2, serving (every server a child process on 127.0.0.1, one at a time, 2 threads):
    at 1, 4, 8 and 16 concurrent streaming clients (each sends `--requests` completions of
    `--max-tokens` tokens one after another, the same prompts for every server): aggregate
    tokens/s (tokens = the model's tokenizer over the returned text), time to first token and
    gaps between streamed pieces (p50 / p99).
    contenders: naive (transformers' generate behind a lock), lmforge fp32, lmforge int4,
    llama.cpp server (q4_0), lmforge with one LoRA adapter, lmforge with 8 LoRA adapters mixed.

Usage: python benchmarks/serve.py [--clients 1 4 8 16] [--requests 2] [--max-tokens 64]
It prints the tables and rewrites the "## Serving" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from lmforge import peft
from lmforge.chat import chat_format
from lmforge.eval.ppl import perplexity
from lmforge.export import export, open_source
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig, generate
from lmforge.quant.decode import quantize_for_decoding

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pair_ratio, update_section  # noqa: E402
from decode import REQUESTS  # noqa: E402
from serve_load import PROMPTS, load, percentile, start  # noqa: E402

SECTION = "## Serving"
MODEL = "smollm2-135m-instruct"
WORK = Path("runs/bench-serve")


def gguf(quant: str) -> Path:
    out = WORK / f"gguf-{quant}"
    if not (out / "model.gguf").is_file():
        export(open_source(MODEL), "gguf", out, quant)
    return out / "model.gguf"


def adapters(n: int) -> list[str]:
    """n LoRA deltas (r=8 on q, v) with random non-zero weights: NAME=PATH flags."""
    specs = []
    for i in range(n):
        path = WORK / f"lora-{i}"
        if not (path / "delta_config.json").is_file():
            delta = peft.apply(load_model(MODEL), "lora", {"r": 8}, seed=i)
            with torch.no_grad():
                for p in delta.trainable_parameters().values():
                    p.normal_(0, 0.01)
            delta.save(path)
        specs.append(f"a{i}={path}")
    return specs


# ── part 1: quantized decoding ─────────────────────────────────────────────────────────


def decode_runners(n: int) -> dict:
    """name → run(prompt ids) → n greedy new tokens, batch 1 (EOS ignored)."""
    config = SamplingConfig(max_new_tokens=n, temperature=0.0)
    runners = {}
    for kind in ("fp32", "int8", "int4"):
        model = load_model(MODEL)
        if kind != "fp32":
            quantize_for_decoding(model, kind)
        runners[kind] = lambda p, m=model: generate(m, [p], config, eos_token_id=None)[0].token_ids
    if importlib.util.find_spec("llama_cpp") is not None:
        import llama_cpp

        for quant in ("q8_0", "q4_0"):
            llm = llama_cpp.Llama(str(gguf(quant)), n_ctx=1024, n_threads=2, verbose=False)

            def run(p: list[int], llm=llm) -> list[int]:
                llm.reset()
                out = []
                for token in llm.generate(p, top_k=1, temp=0.0, repeat_penalty=1.0):
                    out.append(int(token))
                    if len(out) == n:
                        return out
                return out

            runners[f"llama.cpp {quant}"] = run
    return runners


def decode_speed(tokenizer, n: int, rounds: int) -> tuple[dict, dict, dict]:
    """Median tokens/s per contender; the contenders take turns on every prompt (ABBA), so
    load from elsewhere hits all alike; int4 / llama.cpp q4_0 as a median of pair ratios."""
    prompts = [
        tokenizer.encode(chat_format([{"role": "user", "content": r}], tokenizer)) for r in REQUESTS
    ]
    runners = decode_runners(n)
    names = list(runners)
    for name in names:
        runners[name](prompts[0][:8])  # warmup
    seconds = {name: [] for name in names}
    tokens = {name: [] for name in names}
    for r in range(rounds):
        for k, p in enumerate(prompts):
            for name in names if (r + k) % 2 == 0 else names[::-1]:
                start_time = time.perf_counter()
                out = runners[name](p)
                seconds[name].append(time.perf_counter() - start_time)
                if r == 0:
                    tokens[name].append(out)
        print(f"decode round {r + 1}/{rounds} done", flush=True)
    speeds = {name: n / statistics.median(t) for name, t in seconds.items()}
    if "llama.cpp q4_0" in seconds:
        speeds["int4 / llama.cpp q4_0 (pair ratio)"] = pair_ratio(
            seconds["llama.cpp q4_0"], seconds["int4"]
        )
    same = {k: sum(a == b for a, b in zip(tokens[k], tokens["fp32"])) for k in ("int8", "int4")}
    return speeds, same, {"prompts": len(prompts)}


def quality(tokenizer, max_tokens: int) -> dict[str, dict[str, float]]:
    """Per weight format: perplexity on Shakespeare, and against fp32's logits on its first
    512 tokens the mean |Δ logit| and the share of positions with the same top token."""
    from lmforge.data import load_corpus

    texts = [d.text for d in load_corpus("shakespeare")][:3]
    ids = torch.tensor([tokenizer.encode(texts[0])[:512]])
    result, reference = {}, None
    for kind in ("fp32", "int8", "int4"):
        model = load_model(MODEL)
        if kind != "fp32":
            quantize_for_decoding(model, kind)
        ppl = perplexity(model, tokenizer, texts, max_length=512, max_tokens=max_tokens,
                         batch_size=4).perplexity  # fmt: skip
        with torch.no_grad():
            logits = model(ids).logits[0]
        reference = logits if reference is None else reference
        result[kind] = {
            "perplexity": ppl,
            "logit_error": (logits - reference).abs().mean().item(),
            "top1": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
        }
        print(f"{kind}: {result[kind]}", flush=True)
    return result


# ── part 2: serving ────────────────────────────────────────────────────────────────────


def contenders(threads: int, port: int) -> dict[str, tuple[list[str], str]]:
    """name → (command, model id clients send)."""
    lm = [
        sys.executable,
        "-m",
        "lmforge",
        "serve",
        MODEL,
        f"--port={port}",
        "--embeddings=",  # empty: no embedding model
        f"--threads={threads}",
        "--limits.max_concurrent=64",
        "--limits.max_queue=64",
    ]
    many = adapters(8)
    found = {
        NAIVE: (
            [
                sys.executable,
                str(Path(__file__).parent / "serve_load.py"),
                "naive",
                str(port),
                MODEL,
                str(threads),
            ],
            MODEL,
        ),
        FP32: (lm, MODEL),
        INT4: (lm + ["--quantize=int4"], MODEL),
        ONE_LORA: (lm + [f"--adapter={many[0]}"], f"{MODEL}:a0"),
        MANY_LORA: (lm + [f"--adapter={a}" for a in many], f"{MODEL}:*"),
    }
    if importlib.util.find_spec("llama_cpp") is not None:
        found[LLAMA] = (
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf("q4_0")),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_threads",
                str(threads),
                "--n_ctx",
                "2048",
            ],
            MODEL,
        )
    return found


def serve_table(args, tokenizer) -> tuple[str, dict]:
    rows, agg = [], {}
    for name, (cmd, model_id) in contenders(args.threads, args.port).items():
        with start(cmd, args.port) as url:
            for clients in args.clients:

                def body(c: int, i: int, model_id=model_id) -> dict:
                    m = model_id.replace("*", f"a{(c + i) % 8}")
                    return {
                        "model": m,
                        "prompt": PROMPTS[(c + i) % len(PROMPTS)],
                        "max_tokens": args.max_tokens,
                        "temperature": 0,
                        "stream": True,
                    }

                load(url, 1, 1, body)  # warmup
                seconds, timings = load(url, clients, args.requests, body)
                tokens = sum(len(tokenizer.encode(t.text)) for t in timings)
                ttft = [t.ttft for t in timings]
                gaps = [g for t in timings for g in t.gaps]
                agg[(name, clients)] = tokens / seconds
                rows.append(
                    f"| {name} | {clients} | {tokens / seconds:.1f} | "
                    f"{percentile(ttft, 0.5) * 1e3:.0f} / {percentile(ttft, 0.99) * 1e3:.0f}"
                    f" | {percentile(gaps, 0.5) * 1e3:.0f} / {percentile(gaps, 0.99) * 1e3:.0f} |"
                )
                print(rows[-1], flush=True)
    header = (
        "| server | clients | tokens/s (all clients) | TTFT ms p50 / p99 | "
        "inter-token ms p50 / p99 |\n|---|---:|---:|---:|---:|"
    )
    return header + "\n" + "\n".join(rows), agg


NAIVE, FP32, INT4, LLAMA = (
    "naive (transformers generate)",
    "lmforge fp32",
    "lmforge int4",
    ("llama.cpp server (q4_0)"),
)
ONE_LORA, MANY_LORA = "lmforge fp32, 1 LoRA", "lmforge fp32, 8 LoRA mixed"
TARGETS = [  # (ours, reference, what, target ratio)
    (FP32, NAIVE, "lmforge fp32 vs the naive server", 3.0),
    (INT4, LLAMA, "lmforge int4 vs llama.cpp's server", 1.0),
    (MANY_LORA, ONE_LORA, "8 LoRA adapters mixed vs one adapter", 0.8),
]


def verdicts(agg: dict, speeds: dict, same: dict, n_prompts: int, clients: int = 8) -> str:
    lines = []
    for ours, ref, what, target in TARGETS:
        if (ours, clients) in agg and (ref, clients) in agg:
            r = agg[(ours, clients)] / agg[(ref, clients)]
            verdict = "met" if r >= target else "MISSED"
            lines.append(
                f"- {what} at {clients} clients: {r:.2f}x (target ≥ {target:g}x: {verdict})."
            )
        else:
            lines.append(f"- {what} at {clients} clients: not measured.")
    if "llama.cpp q4_0" in speeds:
        r = speeds["int4 / llama.cpp q4_0 (pair ratio)"]
        verdict = "met" if r >= 0.6 else "MISSED"
        what = "batch-1 decode, lmforge int4 vs llama.cpp q4_0"
        lines.append(f"- {what}: {r:.2f}x (target ≥ 0.6x: {verdict}).")
    if not n_prompts:
        return "\n".join(lines)
    lines.append(
        f"- greedy tokens identical to fp32: int8 on {same['int8']}/{n_prompts} prompts "
        f"(target ≥ 90%), int4 on {same['int4']}/{n_prompts}."
    )
    return "\n".join(lines)


def versions() -> str:
    """The anchors' versions: transformers (the naive server) and llama-cpp-python."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("transformers", "llama-cpp-python"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--rounds", type=int, default=1, help="passes over the 8 decode prompts")
    p.add_argument("--ppl-tokens", type=int, default=16384, help="tokens scored for perplexity")
    p.add_argument(
        "--parts",
        nargs="+",
        default=["decode", "quality", "serving"],
        choices=["decode", "quality", "serving"],
        help="what to measure",
    )
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(MODEL)
    parts = []
    if "serving" in args.parts:
        table, agg = serve_table(args, tokenizer)
        parts.append(table)
    else:
        agg = {}
    speeds, same, info = {}, {"int8": 0, "int4": 0}, {"prompts": 0}
    if "decode" in args.parts:
        speeds, same, info = decode_speed(tokenizer, args.max_tokens, args.rounds)
    parts.append(verdicts(agg, speeds, same, info["prompts"]))
    if speeds:
        decode_rows = "\n".join(
            f"| {k} | {v:.2f}x |" if "ratio" in k else f"| {k} | {v:.1f} |"
            for k, v in speeds.items()
        )
        parts.append(
            f"Batch-1 decode (greedy, {args.max_tokens} new tokens, 8 chat prompts, contenders "
            f"taking turns on each prompt; medians):\n\n| contender | new tokens/s |\n"
            f"|---|---:|\n{decode_rows}"
        )
    if "quality" in args.parts:
        q = quality(tokenizer, args.ppl_tokens)
        base = q["fp32"]["perplexity"]
        rows = "\n".join(
            f"| {k} | {v['perplexity']:.3f} | {v['perplexity'] / base - 1:+.2%} | "
            f"{v['logit_error']:.4f} | {100 * v['top1']:.1f}% |"
            for k, v in q.items()
        )
        parts.append(
            f"Quality on Shakespeare: perplexity over the first {args.ppl_tokens:,} tokens "
            "(windows of 512); against fp32's logits on the first 512 tokens, the mean |Δ logit| "
            "and the positions whose top token is fp32's:\n\n"
            "| weights | perplexity | vs fp32 | mean abs Δ logit | same top-1 |\n"
            f"|---|---:|---:|---:|---:|\n{rows}"
        )
    parts.append(
        f"SmolLM2-135M-Instruct on {args.threads} threads; {args.requests} streaming completions "
        f"of up to {args.max_tokens} tokens per client (greedy), prompts cycled; one warmup "
        f"request per server and level; torch {torch.__version__}, {versions()}.\n\n"
        "Run: `python benchmarks/serve.py`"
    )
    body = "\n\n".join(parts)
    print(body)
    if not args.no_write:
        update_section(SECTION, body)


if __name__ == "__main__":
    main()
