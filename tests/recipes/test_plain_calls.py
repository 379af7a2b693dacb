"""Every recipe is a plain function of its config dataclass: no argparse, no command line."""

import io
import json
from pathlib import Path

import numpy as np
import pytest

from lmforge import peft
from lmforge.data.instruct import read_instructions
from lmforge.data.labelled import load_labelled
from lmforge.data.loader import PackedBatches, ValidationBatches
from lmforge.lab import LabConfig, run_lab
from lmforge.recipes.data import (
    FlanBuildConfig,
    ImportConfig,
    SelfInstructBuildConfig,
    StatsConfig,
    data_build_flan,
    data_build_self_instruct,
    data_import,
    data_stats,
)
from lmforge.recipes.finetune import FinetuneConfig, finetune, method_names
from lmforge.recipes.finetune_tasks import FINETUNE_TASKS, FinetuneTask, TaskData
from lmforge.recipes.generate import GenerateConfig, run_generate
from lmforge.recipes.tokenizer import TokenizerTrainConfig, train_tokenizer
from lmforge.tokenizer import Tokenizer
from lmforge.train import TrainConfig, validation_loss
from tests.conftest import TEXT

CONVERSATIONS = [
    {"instruction": "Translate to French: cat", "output": "chat"},
    {
        "conversations": [
            {"from": "human", "value": "用中文说你好"},
            {"from": "gpt", "value": "你好"},
        ]
    },
    {"instruction": "Translate to French: cat", "output": "chat"},  # a duplicate
]


@pytest.fixture
def instructions(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in CONVERSATIONS))
    return path


def test_generate(tiny_model_dir):
    out = io.StringIO()
    cfg = GenerateConfig(model=str(tiny_model_dir), prompt="To be", max_new_tokens=3)
    cfg.temperature = 0.0
    text = run_generate(cfg, out=out)
    assert out.getvalue() == f"To be{text}\n" and text


def test_data_stats_and_import(instructions, tmp_path, capsys):
    figures = data_stats(StatsConfig(files=[str(instructions)]))
    assert (figures["records"], figures["duplicates"], figures["formats"]) == (
        3,
        1,
        {"alpaca": 2, "sharegpt": 1},
    )
    out = tmp_path / "out.jsonl"
    data = data_import(ImportConfig(files=[str(instructions)], out=str(out)))
    assert data.duplicates == 1 and len(read_instructions(out)) == 2
    assert "wrote 2 records" in capsys.readouterr().out


def test_data_build_flan_from_a_templates_file(tmp_path):
    labelled = tmp_path / "topics.jsonl"
    rows = [{"text": f"故事 story {i}", "label": ("sport", "tech")[i % 2]} for i in range(12)]
    labelled.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    templates = tmp_path / "topics.yaml"
    templates.write_text(
        f"task: topics\ndataset: {labelled}\nlabels: [sport, tech]\ntemplates:\n"
        "  - {id: a, phrasing: seen, prompt: 'Topic of: {text}? {options_or}', answer: '{label}'}\n"
    )
    out = tmp_path / "flan.jsonl"
    records = data_build_flan(FlanBuildConfig(task=str(templates), out=str(out), max_records=4))
    assert len(records) == 4 and len(read_instructions(out)) == 4  # of the 8 training examples
    test_ids = {e.origin for e in load_labelled(str(labelled), "test")}
    assert not test_ids & {r.meta["example_id"] for r in records}  # the test split stays out
    assert {r.meta["template_id"] for r in records} == {"a"}
    assert all(r.messages[0]["content"].startswith("Topic of: 故事 story") for r in records)


def test_data_build_self_instruct_with_an_injected_model(tmp_path):
    answer = " List three colours.\nInput: <noinput>\nOutput: red, green, blue"
    out = tmp_path / "si.jsonl"
    cfg = SelfInstructBuildConfig(out=str(out), n=1, k=2, k_machine=0)
    result = data_build_self_instruct(cfg, generate_fn=lambda prompt: answer)
    assert [r.messages[0]["content"] for r in read_instructions(out)] == ["List three colours."]
    assert result.prompts == 1


def test_tokenizer_from_files_equals_the_one_from_their_texts(tmp_path):
    texts = [TEXT[:900], "人人生而自由，在尊严和权利上一律平等。" * 20]
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text(text, encoding="utf-8")
    out = tmp_path / "tok.json"
    tok = train_tokenizer(TokenizerTrainConfig([str(p) for p in paths], 300, str(out)))
    assert tok.fingerprint == Tokenizer.train(texts, vocab_size=300).fingerprint
    assert Tokenizer.from_file(out).fingerprint == tok.fingerprint


def test_lab_list(capsys):
    assert run_lab(LabConfig("list")) is None
    assert capsys.readouterr().out.splitlines()[0].startswith("alignment ")


# ── a new finetune task is one registry entry ───────────────────────────────────────────────


def _windows(cfg, tokenizer, run_dir) -> TaskData:
    """Next-token training on the corpus text itself; its test metric is the loss."""
    tokens = np.array(tokenizer.encode(TEXT), dtype=np.int64)
    n, bs = cfg.data.max_length, cfg.train.batch_size
    val = ValidationBatches(tokens, n, bs, max_batches=2)
    return TaskData(
        PackedBatches(tokens, n, bs, seed=cfg.train.seed),
        val,
        test=lambda model: {"test_loss": validation_loss(model, val)[0]},
        facts={"tokens": len(tokens)},
    )


def test_a_toy_finetune_task_trains_through_the_registry(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(FINETUNE_TASKS._items, "windows", FinetuneTask(_windows))
    train = TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_every=2, eval_batches=2)
    cfg = FinetuneConfig(
        run_dir=str(tmp_path / "run"), model=str(tiny_model_dir), method="lora", task="windows",
        delta={"r": 2}, train=train,
    )  # fmt: skip
    cfg.data.max_length = 16
    results = finetune(cfg, progress=False)
    assert results["tokens"] == len(Tokenizer.from_file(tiny_model_dir).encode(TEXT))
    assert results["test_loss"] == pytest.approx(results["val_loss"], rel=1e-6)  # trained model
    assert (tmp_path / "run" / "delta" / "delta_config.json").exists()


def test_methods_are_the_delta_methods_and_the_training_modes():
    assert method_names() == sorted([*peft.METHODS, "full", "none"])
    assert peft.build("lora").load_options() == {}
    assert peft.build("qlora").load_options() == {
        "quantize": {
            "quant_type": "nf4",
            "double_quant": True,
            "blocksize": 64,
            "embedding_dtype": "bfloat16",
        }
    }
