"""Where batch-1 decoding spends its time: lmforge fp32, int8 and int4 under torch.profiler,
beside llama.cpp's whole token (q8_0, q4_0) on the same model and threads, and int4 with the
whole model step compiled (torch.compile, inductor's C++ for everything but the kernel).

SmolLM2-135M-Instruct, greedy, one chat prompt, `--tokens` new tokens after a warmup. Each
lmforge step's operator time is grouped as: the weight products (the int4-packed kernel, or
fp32 matmuls), attention, and everything else (norms, rotary, embedding, sampling, and the
Python between operators: the step's wall time, measured without the profiler, less its
operators). From the weight bytes a
token reads, the weight products' effective bandwidth follows.

Usage: python benchmarks/decode_profile.py [--tokens 32] [--threads 2]
It prints the table and rewrites the "## Where batch-1 decoding spends its time" section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lmforge.chat import chat_format
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig, generate
from lmforge.quant.decode import quantize_for_decoding

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_section  # noqa: E402
from serve import MODEL, gguf  # noqa: E402

SECTION = "## Where batch-1 decoding spends its time"
GROUPS = {  # operator name → group; first match wins
    "_weight_int4pack_mm": "weight products",
    "aten::mm": "weight products",
    "aten::addmm": "weight products",
    "aten::bmm": "weight products",
    "aten::linear": None,  # a wrapper: its children are counted
    "aten::matmul": None,
    "scaled_dot_product": "attention",
}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one token reads: every parameter and buffer but the embedding
    table (a token reads one row of it)."""
    embed = model.model.embed_tokens.weight
    tensors = [*model.parameters(), *model.buffers()]
    unique = {t.data_ptr(): t for t in tensors if t.data_ptr() != embed.data_ptr()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def group_of(name: str) -> str | None:
    for key, group in GROUPS.items():
        if key in name:
            return group
    return "other operators"


def profile_lmforge(kind: str, prompt: list[int], n: int) -> dict[str, float]:
    """ms per new token by group, and the weight products' GB/s."""
    model = load_model(MODEL)
    if kind != "fp32":
        quantize_for_decoding(model, kind)
    config = SamplingConfig(max_new_tokens=n, temperature=0.0)
    generate(model, [prompt], config, eos_token_id=None)  # warmup
    start = time.perf_counter()
    generate(model, [prompt], config, eos_token_id=None)
    wall = time.perf_counter() - start  # without the profiler's own overhead
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, [prompt], config, eos_token_id=None)
    ms = {"weight products": 0.0, "attention": 0.0, "other operators": 0.0}
    for event in prof.key_averages():
        group = group_of(event.key)
        if group is not None:
            ms[group] += event.self_cpu_time_total / 1e3
    ms = {k: v / n for k, v in ms.items()}  # the prompt's prefill is a small share at n ≥ 32
    ms["Python and dispatch"] = max(wall * 1e3 / n - sum(ms.values()), 0.0)
    ms["whole token"] = wall * 1e3 / n
    ms["weight GB/s"] = weight_bytes(model) / (ms["weight products"] / 1e3) / 1e9
    return ms


def compiled_ms(prompt: list[int], n: int) -> tuple[float, float, bool]:
    """int4 with the whole model step under torch.compile: (ms per token, seconds the first
    call took to compile, greedy tokens equal to eager's)."""
    model = load_model(MODEL)
    quantize_for_decoding(model, "int4")
    config = SamplingConfig(max_new_tokens=n, temperature=0.0)
    eager = generate(model, [prompt], config, eos_token_id=None)[0].token_ids
    model.forward = torch.compile(model.forward, dynamic=True)
    start = time.perf_counter()
    generate(model, [prompt], config, eos_token_id=None)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = generate(model, [prompt], config, eos_token_id=None)[0].token_ids
    return (time.perf_counter() - start) * 1e3 / n, compile_s, out == eager


def llama_cpp_ms(quant: str, prompt: list[int], n: int, threads: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf(quant)), n_ctx=1024, n_threads=threads, verbose=False)
    times = []
    for _ in range(2):  # the first pass warms up
        llm.reset()
        start = time.perf_counter()
        for i, _token in enumerate(llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0)):
            if i + 1 == n:
                break
        times.append(time.perf_counter() - start)
    return times[-1] * 1e3 / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(MODEL)
    text = "Explain in two sentences why the sky is blue."
    prompt = tokenizer.encode(chat_format([{"role": "user", "content": text}], tokenizer))
    columns = ["weight products", "attention", "other operators", "Python and dispatch"]
    rows = []
    for kind in ("fp32", "int8", "int4"):
        ms = profile_lmforge(kind, prompt, args.tokens)
        cells = " | ".join(f"{ms[c]:.2f}" for c in columns)
        rows.append(f"| lmforge {kind} | {ms['whole token']:.2f} | {cells} | "
                    f"{ms['weight GB/s']:.1f} |")  # fmt: skip
        print(rows[-1], flush=True)
    try:  # inductor needs a C++ compiler; without one the row says why
        whole, compile_s, same = compiled_ms(prompt, args.tokens)
        tokens = "equal" if same else "DIFFER"
        name = f"lmforge int4, torch.compile (first call {compile_s:.0f} s; tokens {tokens})"
        rows.append(f"| {name} | {whole:.2f} | – | – | – | – | – |")
    except Exception as e:  # noqa: BLE001 (any compiler failure is reported, not fatal)
        rows.append(f"| lmforge int4, torch.compile: not measured ({type(e).__name__}) | – "
                    "| – | – | – | – | – |")  # fmt: skip
    print(rows[-1], flush=True)
    if importlib.util.find_spec("llama_cpp") is not None:
        import llama_cpp

        for quant in ("q8_0", "q4_0"):
            whole = llama_cpp_ms(quant, prompt, args.tokens, args.threads)
            rows.append(f"| llama.cpp {quant} ({llama_cpp.__version__}) | {whole:.2f} | "
                        "– | – | – | – | – |")  # fmt: skip
            print(rows[-1], flush=True)
    header = (
        "| decoder | ms per token | weight products | attention | other operators | "
        "Python and dispatch | weight products' GB/s |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    body = (
        f"{header}\n" + "\n".join(rows) + "\n\n"
        f"SmolLM2-135M-Instruct, batch 1, greedy, {args.tokens} new tokens after a warmup, "
        f"{args.threads} threads; torch {torch.__version__} profiler (self CPU time per "
        "operator group, per new token; Python and dispatch = wall time less the operators).\n\n"
        "Run: `python benchmarks/decode_profile.py`"
    )
    print(body)
    if not args.no_write:
        update_section(SECTION, body)


if __name__ == "__main__":
    main()
