"""generate, chat and eval run the model on `--device`; a device that is not there is
refused when the flags are read, before a model loads."""

from __future__ import annotations

import io

import pytest
import torch

from lmforge.cli import main
from lmforge.recipes.generate import GenerateConfig, run_generate
from lmforge.recipes.source import ModelSource, load_source

VERBS = [["generate", "hi"], ["chat"], ["eval"]]


@pytest.mark.parametrize("verb", VERBS)
def test_a_device_torch_does_not_know_is_refused_with_the_flag(verb, capsys) -> None:
    assert main([*verb, "--device", "tpu9"]) == 2
    assert "'tpu9' is not a device name torch knows; use --device=cpu" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where there is no CUDA")
@pytest.mark.parametrize("verb", VERBS)
def test_cuda_where_there_is_none_is_refused_with_the_flag(verb, capsys) -> None:
    assert main([*verb, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "needs CUDA, which is not available here; use --device=auto or --device=cpu" in err


def test_the_model_is_loaded_onto_the_device(tiny_model_dir) -> None:
    for name, expected in [
        ("cpu", "cpu"),
        ("auto", "cuda" if torch.cuda.is_available() else "cpu"),
    ]:
        model, _ = load_source(ModelSource(model=str(tiny_model_dir), device=name))
        assert {p.device.type for p in model.parameters()} == {expected}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_greedy_tokens_on_cuda_are_the_cpu_ones(tiny_model_dir) -> None:
    def greedy(device: str) -> str:
        cfg = GenerateConfig(
            model=str(tiny_model_dir),
            prompt="To be",
            max_new_tokens=16,
            temperature=0.0,
            no_stream=True,
            device=device,
        )
        return run_generate(cfg, out=io.StringIO())

    assert greedy("cuda") == greedy("cpu")
