"""MoE and RetNet models go through the dense model's path: pretrain (the loop, checkpoints,
metrics) → save → load → generate, from the command line."""

import json

import pytest
import torch

from lmforge.cli import main
from lmforge.hub import load_model
from lmforge.model.generate import SamplingConfig, generate
from tests.conftest import tiny_args

VARIANTS = {
    "moe": ["--model.ffn=moe", "--model.n_experts=4", "--model.top_k=2"],
    "retnet": ["--model.mixer=retention", "--model.chunk_size=16"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_pretrain_save_load_generate(variant, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(corpus, run) + VARIANTS[variant]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == "lmforge"  # top-2 without renormalising: no HF class
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(("expert_share" in r) == (variant == "moe") for r in rows if "loss" in r)
    capsys.readouterr()
    args = ["generate", "--model", str(run / "model"), "--prompt", "To be"]
    assert main(args + ["--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("To be")
    model = load_model(run / "model")
    greedy = SamplingConfig(max_new_tokens=5, temperature=0.0)
    prompt = [3, 4, 5]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(5):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert generate(model, [prompt], greedy)[0].token_ids == seq[3:]
