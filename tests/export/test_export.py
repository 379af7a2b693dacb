"""`lmforge export`: hf, merged and peft directories that transformers and peft load with the
tuned model's logits; non-mergeable deltas refused; the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmforge import peft
from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.export import export, locate, open_source
from lmforge.hub import load_model

IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 250, 11]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def saved_delta(base_dir, out, method: str, config: dict) -> torch.Tensor:
    """Apply `method` to the base with non-zero weights, save it to out/delta; its logits."""
    delta = peft.apply(load_model(base_dir), method, config, seed=0)
    with torch.no_grad():
        for p in delta.trainable_parameters().values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    delta.save(out / "delta")
    return logits(delta.model)


DELTAS = {"lora": {"r": 4, "targets": ["q_proj", "v_proj", "down_proj"]}, "bitfit": {}}


@pytest.mark.parametrize("method", sorted(DELTAS))
def test_merged_export_loads_in_transformers_with_the_tuned_logits(
    tiny_model_dir, tmp_path, method
):
    tuned = saved_delta(tiny_model_dir, tmp_path, method, DELTAS[method])
    source = open_source(str(tmp_path / "delta"))
    export(source, "merged", tmp_path / "merged")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (logits(theirs) - tuned).abs().max() <= 1e-4
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def test_lora_export_loads_in_peft_with_the_tuned_logits(tiny_model_dir, tmp_path):
    peft_lib = pytest.importorskip("peft")
    tuned = saved_delta(tiny_model_dir, tmp_path, "lora", DELTAS["lora"])
    export(open_source(str(tmp_path / "delta")), "peft", tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    theirs = peft_lib.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    assert (logits(theirs) - tuned).abs().max() <= 1e-5
    recorded = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert recorded["base_model_name_or_path"] == str(tiny_model_dir)


def test_prompt_tuning_export_loads_in_peft(tiny_model_dir, tmp_path):
    peft_lib = pytest.importorskip("peft")
    tuned = saved_delta(tiny_model_dir, tmp_path, "prompt", {"num_virtual_tokens": 3})
    export(open_source(str(tmp_path / "delta")), "peft", tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    theirs = peft_lib.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ours = logits(theirs)[:, -IDS.shape[1] :]  # peft's logits include the virtual columns
    assert (ours - tuned[:, -IDS.shape[1] :]).abs().max() <= 1e-5


def test_what_a_format_cannot_hold_is_refused_with_the_way_out(tiny_model_dir, tmp_path):
    saved_delta(tiny_model_dir, tmp_path, "adapter", {})
    with pytest.raises(ConfigError, match="cannot be merged.*format=peft"):
        export(open_source(str(tmp_path / "delta")), "merged", tmp_path / "merged")
    with pytest.raises(ConfigError, match="format=merged"):
        export(open_source(str(tmp_path / "delta")), "hf", tmp_path / "hf")
    with pytest.raises(ConfigError, match="peft's adapter format holds LoRA"):
        export(open_source(str(tiny_model_dir)), "peft", tmp_path / "p")


def test_sources_are_found_in_runs_deltas_and_model_directories(tiny_model_dir, tmp_path):
    run = tiny_model_dir.parent  # a pretrain run directory: run/model
    assert locate(str(run)) == (str(run / "model"), None)
    assert locate(str(tiny_model_dir)) == (str(tiny_model_dir), None)
    saved_delta(tiny_model_dir, tmp_path, "lora", DELTAS["lora"])
    assert locate(str(tmp_path / "delta")) == (str(tiny_model_dir), tmp_path / "delta")
    (tmp_path / "config.yaml").write_text(f"model: {tiny_model_dir}\n")
    assert locate(str(tmp_path)) == (str(tiny_model_dir), tmp_path / "delta")
    with pytest.raises(ConfigError, match="neither an embedded model"):
        locate(str(tmp_path / "nothing"))


def test_cli_exports_a_pretrain_run_as_hf(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    run = str(tiny_model_dir.parent)
    assert main(["export", run, "--format", "hf", "--out", str(out)]) == 0
    assert "hf export written to" in capsys.readouterr().out
    native = load_model(tiny_model_dir)
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    assert (logits(theirs) - logits(native)).abs().max() <= 1e-4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["export", run, "--format", "hf", "--out", str(tmp_path / "other")]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"  # never overwritten
    assert main(["export", run, "--format", "nope", "--out", str(out)]) == 2
    assert "format 'nope' is unknown; choose --format from gguf" in capsys.readouterr().err


def test_help_lists_the_registered_formats_and_quants(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "SOURCE model name or directory, run, delta or peft adapter" in text
    assert "--format STR what to write (registered: gguf, hf, merged, peft)" in text
    assert "--quant STR gguf weights (registered: f16, q4_0, q8_0)" in text
