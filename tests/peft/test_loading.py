"""`load_adapter` finds a delta in a run directory, a delta directory or a peft adapter, and
`lmforge generate --adapter` generates with it."""

import pytest
import torch

from lmforge import peft
from lmforge.cli import main
from lmforge.errors import CheckpointError
from lmforge.hub import load_model


def _trained_lora(model_dir, run_dir):
    delta = peft.apply(load_model(model_dir), "lora", {"r": 4, "targets": ["q_proj", "v_proj"]})
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in delta.trainable_parameters().items():
            if "lora_B" in name:
                p.normal_(std=0.5)
    delta.save(run_dir / "delta")
    return delta


def test_run_dir_delta_dir_and_peft_dir_all_load(tiny_model_dir, tmp_path):
    from lmforge.peft.interop.lora import save_peft_lora

    delta = _trained_lora(tiny_model_dir, tmp_path / "run")
    ids = torch.tensor([[5, 9, 2, 7]])
    expected = delta.model(ids).logits
    save_peft_lora(delta, tmp_path / "peft")
    for path in (tmp_path / "run", tmp_path / "run" / "delta", tmp_path / "peft"):
        loaded = peft.load_adapter(path, load_model(tiny_model_dir))
        assert torch.allclose(loaded.model(ids).logits, expected, atol=1e-6), path


def test_missing_or_empty_adapter_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        peft.load_adapter(tmp_path / "nope", load_model(tiny_model_dir))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no adapter"):
        peft.load_adapter(tmp_path / "empty", load_model(tiny_model_dir))


def test_generate_with_adapter_uses_the_delta(tiny_model_dir, tmp_path, capsys):
    from lmforge.model.generate import SamplingConfig, generate

    delta = _trained_lora(tiny_model_dir, tmp_path / "run")
    from lmforge.hub import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    prompt = "To be"
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    want = generate(delta.model.eval(), [tok.encode(prompt)], config, decode=tok.decode)[0].text
    plain = load_model(tiny_model_dir).eval()
    assert generate(plain, [tok.encode(prompt)], config, decode=tok.decode)[0].text != want
    args = ["generate", "--model", str(tiny_model_dir), "--prompt", prompt, "--no-stream"]
    args += ["--max-new-tokens", "6", "--temperature", "0"]
    assert main([*args, "--adapter", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out == prompt + want + "\n"
    assert main([*args, "--adapter", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
