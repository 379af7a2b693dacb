"""`lmforge moefy` on a small pretrained native model: the MoEfied model is saved with its
tokenizer and a report, and loads and generates like any model."""

import json

import pytest

from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.hub import load_model
from lmforge.recipes.moefy import MoefyConfig, split_texts


def test_moefy_cli_writes_a_model_and_a_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "moe"
    args = ["moefy", str(tiny_model_dir), "--experts", "4", "--top_k", "2", "--out", str(out)]
    args += ["--tokens=1024", "--eval_tokens=512", "--seq_len=64", "--router_steps=20"]
    assert main(args) == 0
    assert "2 of 4 experts per token; perplexity" in capsys.readouterr().out
    report = json.loads((out / "moefy.json").read_text())
    assert report["ffn_share"] == 0.5 and report["ppl"]["dense"] > 1
    assert report["ppl_ratio"] == pytest.approx(report["ppl"]["moefied"] / report["ppl"]["dense"])
    model = load_model(out)
    assert (model.config.ffn, model.config.n_experts, model.config.top_k) == ("moe", 4, 2)
    assert (out / "tokenizer.json").is_file()
    capsys.readouterr()
    generate = ["generate", "--model", str(out), "--prompt", "To be", "--max-new-tokens", "8"]
    assert main(generate + ["--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("To be")


def test_config_errors_and_the_held_out_split():
    with pytest.raises(ConfigError, match="top_k \\(5\\) exceeds experts \\(4\\)"):
        MoefyConfig(experts=4, top_k=5).validate()
    with pytest.raises(ConfigError, match="clustering 'spectral'"):
        MoefyConfig(clustering="spectral").validate()
    fit, held = split_texts(["abcdefghij", "0123456789", "中文的文本也可以分开"])
    assert fit == ["abcdefghi", "012345678", "中文的文本也可以分"] and held == ["j", "9", "开"]
