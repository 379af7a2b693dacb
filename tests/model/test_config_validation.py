"""Every invalid model shape is refused before anything is built or written, naming the field."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.model import preset
from tests.conftest import tiny_args

INVALID = [
    (
        {"d_model": 50},
        "model.d_model \\(50\\) must be a multiple of model.n_head.*d_model=48",
    ),
    ({"n_kv_head": 3}, "model.n_head \\(4\\) must be a multiple of model.n_kv_head \\(3\\)"),
    ({"n_kv_head": 0}, "model.n_kv_head must be positive"),
    ({"head_dim": 7}, "model.head_dim must be even"),
    ({"n_layer": 0}, "model.n_layer must be positive"),
    ({"d_ff": -1}, "model.d_ff must be positive"),
    ({"norm_eps": 0.0}, "model.norm_eps must be positive"),
    ({"max_seq_len": 0}, "model.max_seq_len must be positive"),
    ({"dropout": 1.0}, "model.dropout must be in"),
    ({"attention": "flash3"}, "model.attention 'flash3' is unknown"),
]


@pytest.mark.parametrize(("fields", "message"), INVALID, ids=[next(iter(f)) for f, _ in INVALID])
def test_invalid_shapes_are_refused(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        preset("tiny", **fields)


@pytest.mark.parametrize(("fields", "message"), INVALID[:3], ids=["d_model", "kv", "kv0"])
def test_pretrain_refuses_them_before_writing_anything(fields, message, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    flags = [f"--model.{k}={v}" for k, v in fields.items()]
    assert main(tiny_args(corpus, run) + flags) == 2
    assert f"model.{next(iter(fields))}" in capsys.readouterr().err
    assert not run.exists()
