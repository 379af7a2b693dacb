"""docs/extending.md stays true: its code blocks, written into a temporary module and imported,
register a delta method, a model family, an eval task, a lab and an optimizer that work
through lmforge's own entry points."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from lmforge import peft
from lmforge.cli import main
from lmforge.eval import TASKS, EvalSettings, evaluate
from lmforge.lab import LABS, run_experiment
from lmforge.model import CausalLM, preset
from lmforge.model.hf_config import FAMILIES
from lmforge.model.targets import default_targets
from lmforge.recipes.finetune import method_names
from lmforge.tokenizer import Tokenizer
from lmforge.train import TrainConfig, train
from lmforge.train.optim import OPTIMIZERS
from tests.train.test_loop import RandomTokens

PAGE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
REGISTRIES = [peft.METHODS, FAMILIES, TASKS, LABS, OPTIMIZERS]


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """The page's code blocks as one module, imported; the registries are restored after."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 5, "one example per kind of extension"
    path = tmp_path_factory.mktemp("toys") / "lmforge_toys.py"
    path.write_text("\n\n".join(blocks), encoding="utf-8")
    saved = [dict(r._items) for r in REGISTRIES]
    spec = importlib.util.spec_from_file_location("lmforge_toys", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lmforge_toys"] = module
    spec.loader.exec_module(module)
    yield module
    for registry, items in zip(REGISTRIES, saved):
        registry._items.clear()
        registry._items.update(items)
    del sys.modules["lmforge_toys"]


def tiny() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=300)).eval()


def test_the_delta_method_keeps_the_contract(toys, tmp_path):
    assert "ia3" in peft.METHODS and "ia3" in method_names()  # finetune --method ia3
    ids = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    base = tiny()
    before = base(ids).logits
    delta = peft.apply(base, "ia3", {"targets": ["v_proj"]}, seed=0)
    assert torch.equal(delta.model(ids).logits, before)  # identity at initialisation
    assert sorted(delta.trainable_parameters()) == [
        f"model.layers.{i}.self_attn.v_proj.scale" for i in (0, 1)
    ]
    with torch.no_grad():
        for p in delta.trainable_parameters().values():
            p.mul_(1.5)
    expected = delta.model(ids).logits
    delta.save(tmp_path / "delta")
    assert torch.equal(peft.load_delta(tmp_path / "delta", tiny()).model(ids).logits, expected)


def test_the_model_family_gives_its_default_targets(toys):
    model = torch.nn.Linear(2, 2)
    model.config = type("Config", (), {"model_type": "toy"})()
    assert "ToyForCausalLM" in FAMILIES
    assert default_targets(model) == ["q_proj", "k_proj", "v_proj"]


def test_the_eval_task_is_scored(toys, capsys):
    tokenizer = Tokenizer.train(["positive negative review sentiment film"] * 20, 300)
    result = evaluate(tiny(), tokenizer, "toy-sentiment", EvalSettings.from_fields(shots=1))
    assert result.n == 4 and 0.0 <= result.metrics["accuracy"] <= 1.0
    assert main(["eval", "--task", "list"]) == 0
    assert "toy-sentiment" in capsys.readouterr().out


def test_the_lab_runs(toys, tmp_path, capsys):
    assert main(["lab", "list"]) == 0
    assert "toy-lab" in capsys.readouterr().out
    report = run_experiment("toy-lab", tmp_path, quick=True)
    assert "| 2x | 90 |" in report.read_text(encoding="utf-8")


def test_the_optimizer_trains(toys, tmp_path):
    config = TrainConfig(
        max_steps=3, batch_size=2, warmup_steps=1, optimizer="sgd-momentum", lr=1e-2,
        eval_every=0, eval_batches=0, log_every=1, device="cpu",
    )  # fmt: skip
    result = train(tiny().train(), RandomTokens(), config, tmp_path, progress=False)
    assert result.step == 3 and len(result.history) >= 3
