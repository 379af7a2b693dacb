"""`lmforge serve` as a verb of the command tree: its flags are ServeConfig's fields, the model
is positional, `--adapter` repeats, and a refusal names the flag to type."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.recipes import serve


@pytest.fixture
def served(monkeypatch):
    """The config `lmforge serve` would run with (the server itself is not started)."""
    seen = []
    monkeypatch.setattr(serve, "run_serve", seen.append)
    return seen


def test_flags_build_the_config(served):
    argv = ["serve", "runs/pt/model", "--adapter", "sql=runs/ft-sql", "--adapter", "诗=runs/poem"]
    argv += ["--engine.block_size", "8", "--limits.max_n=2", "--quantize", "int8"]
    assert main(argv) == 0
    (cfg,) = served
    assert cfg.model == "runs/pt/model" and cfg.quantize == "int8"
    assert cfg.adapters == ["sql=runs/ft-sql", "诗=runs/poem"]
    assert (cfg.engine.block_size, cfg.limits.max_n, cfg.host) == (8, 2, "127.0.0.1")


def test_the_yaml_preset_and_a_flag_over_it(served):
    assert main(["serve", "--config", "configs/serve-smollm2.yaml", "--port", "8080"]) == 0
    (cfg,) = served
    assert (cfg.model, cfg.quantize, cfg.port, cfg.limits.max_queue) == (
        "smollm2-135m-instruct",
        "int4",
        8080,
        64,
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--adapter", "sql"], "adapter 'sql' is not NAME=PATH; write it as --adapters=sql="),
        (["--quantize", "int3"], "quantize 'int3' is unknown; choose --quantize from int4, int8"),
        (["--port", "0"], "port 0 is not a TCP port; choose --port in 1..65535"),
        (["--engine.max_running", "8", "--engine.step_tokens", "4"], "--engine.step_tokens=8"),
        (["--limits.max_n", "0"], "max_n must be at least 1, got 0; raise --limits.max_n"),
    ],
)
def test_a_refusal_names_the_flag(served, capsys, flags, expected):
    assert main(["serve", *flags]) == 2
    assert expected in capsys.readouterr().err
    assert not served


def test_help_says_each_field_and_the_registered_quantizations(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "MODEL embedded name or model directory" in text
    assert "--adapters STR, --adapter STR NAME=PATH → MODEL:NAME (repeat the flag" in text
    assert "--quantize STR integer weights (empty: floats) (registered: int4, int8)" in text
    assert "--engine.block_size INT tokens per KV-cache block" in text
