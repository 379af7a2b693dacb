"""Shared fixtures: a tiny corpus and a tiny pretrained model directory (built once)."""

import pytest

from lmforge.cli import main

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles.\n"
) * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def tiny_args(corpus, run_dir, steps=6):
    return [
        "pretrain",
        f"--run_dir={run_dir}",
        f"--data.corpus={corpus}",
        "--data.seq_len=32",
        "--model.preset=tiny",
        "--tokenizer.vocab_size=300",
        f"--train.max_steps={steps}",
        "--train.batch_size=4",
        "--train.warmup_steps=2",
        "--train.eval_every=3",
        "--train.save_every=3",
        "--train.eval_batches=2",
        "--train.log_every=1",
    ]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer native model pretrained for a few steps, saved as a transformers directory."""
    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    assert main(tiny_args(corpus, root / "run")) == 0
    return root / "run" / "model"
