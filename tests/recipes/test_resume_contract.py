"""A resume keeps its word: settings that change what a run computes are refused before
anything is written (config.yaml included); the corpus and tokenizer a run resumes on are
the ones it started with; training longer is allowed."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from tests.conftest import TEXT, tiny_args


@pytest.fixture
def run(corpus, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(corpus, run, steps=4)) == 0
    return run


def refused(corpus, run, capsys, *flags: str) -> str:
    config = (run / "config.yaml").read_text()
    files = sorted(p.name for p in run.rglob("*"))
    assert main(tiny_args(corpus, run, steps=4) + list(flags)) == 2
    assert (run / "config.yaml").read_text() == config  # the run's own config is kept
    assert sorted(p.name for p in run.rglob("*")) == files  # nothing else written either
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, field",
    [
        ("--data.seq_len=16", "data.seq_len: 32 → 16"),
        ("--tokenizer.vocab_size=280", "tokenizer.vocab_size: 300 → 280"),
        ("--train.seed=7", "train.seed: 1337 → 7"),
        ("--model.n_layer=3", "model.n_layer: 2 → 3"),
    ],
)
def test_a_changed_setting_is_refused(run, corpus, capsys, flag, field):
    err = refused(corpus, run, capsys, flag)
    assert field in err and "undo those settings" in err and "another --run_dir" in err


def test_another_corpus_is_refused(run, corpus, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    err = refused(corpus, run, capsys, f"--data.corpus={other}")
    assert "data.corpus" in err


def test_the_same_file_with_other_text_is_refused(run, corpus, capsys):
    corpus.write_text(TEXT.replace("question", "answer"), encoding="utf-8")
    err = refused(corpus, run, capsys)
    assert "trained on other text" in err or "the corpus text" in err


def test_training_longer_is_a_resume(run, corpus):
    assert main(tiny_args(corpus, run, steps=6)) == 0
    assert "max_steps: 6" in (run / "config.yaml").read_text()
    assert (run / "checkpoints" / "step-00000006").is_dir()
