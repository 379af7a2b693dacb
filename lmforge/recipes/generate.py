"""`lmforge generate`: load a model directory and its tokenizer, continue a prompt."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lmforge.errors import AssetError
from lmforge.model.generate import SamplingConfig, generate, stream


def load_model_dir(path: str | Path):
    """A native model and tokenizer from a transformers-format directory (config, weights,
    tokenizer.json) as written by `lmforge pretrain`."""
    from lmforge.model.hf import load_hf_dir
    from lmforge.tokenizer import Tokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise AssetError(
            f"{path / 'tokenizer.json'} is missing: {path} is not a model directory "
            "(a pretraining run writes one to RUN_DIR/model)"
        )
    return load_hf_dir(path).eval(), Tokenizer.from_file(path / "tokenizer.json")


def run_generate(args: argparse.Namespace) -> str:
    model, tokenizer = load_model_dir(args.model)
    config = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=list(args.stop),
    )
    config.validate()
    prompt = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eos_id]
    torch.set_grad_enabled(False)
    sys.stdout.write(args.prompt)
    if args.no_stream:
        text = generate(
            model, [prompt], config, eos_token_id=tokenizer.eos_id, decode=tokenizer.decode
        )[0].text
        sys.stdout.write(text)
    else:
        pieces = []
        for piece in stream(
            model, prompt, config, eos_token_id=tokenizer.eos_id, decode=tokenizer.decode
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
            pieces.append(piece)
        text = "".join(pieces)
    sys.stdout.write("\n")
    return text
