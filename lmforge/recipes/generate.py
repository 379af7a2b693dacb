"""`lmforge generate`: load a model and its tokenizer, continue a prompt (streamed)."""

from __future__ import annotations

import argparse
import sys

from lmforge.model.generate import SamplingConfig, generate, stream


def add_sampling_args(p: argparse.ArgumentParser, temperature: float = 0.8) -> None:
    """The model and sampling flags `generate` and `chat` share."""
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="an embedded model name or a model directory (e.g. runs/NAME/model)",
    )
    p.add_argument("--backend", default="native", help="native | hf (keep transformers' model)")
    p.add_argument(
        "--adapter",
        default="",
        help="a trained delta: a finetune run directory, its delta/ or a peft adapter directory",
    )
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)


def sampling_from_args(args: argparse.Namespace, stop: list[str] = ()) -> SamplingConfig:
    config = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=list(args.stop) + list(stop),
    )
    config.validate()
    return config


def load_for_generation(args: argparse.Namespace):
    """The model (with its adapter applied, and merged where the method allows) and tokenizer."""
    from lmforge.hub import load_model, load_tokenizer

    model = load_model(args.model, backend=args.backend)
    if getattr(args, "adapter", ""):
        from lmforge.peft.interop import load_adapter

        delta = load_adapter(args.adapter, model)
        if delta.mergeable:
            delta.merge()  # no added latency while generating
        model = delta.model
    return model.eval(), load_tokenizer(args.model)


def run_generate(args: argparse.Namespace) -> str:
    model, tokenizer = load_for_generation(args)
    config = sampling_from_args(args)
    prompt = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eos_id]
    kwargs = dict(eos_token_id=tokenizer.eos_id, decode=tokenizer.decode, truncate=args.truncate)
    sys.stdout.write(args.prompt)
    if args.no_stream:
        text = generate(model, [prompt], config, **kwargs)[0].text
        sys.stdout.write(text)
    else:
        pieces = []
        for piece in stream(model, prompt, config, **kwargs):
            sys.stdout.write(piece)
            sys.stdout.flush()
            pieces.append(piece)
        text = "".join(pieces)
    sys.stdout.write("\n")
    return text
