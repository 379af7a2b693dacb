"""`lmforge finetune` end to end on the tiny model: classification through a verbalizer."""

import json

import pytest

from lmforge.cli import main
from lmforge.data.examples import ExampleBatches, collate
from lmforge.errors import ConfigError
from lmforge.hub import load_tokenizer
from lmforge.recipes.finetune_tasks import encode_examples
from lmforge.train.objectives import LabelWords

LINES = {"the": "The slings and arrows of outrageous fortune", "be": "To be or not"}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "data.jsonl"
    rows = [
        {"text": f"{text} {i}", "label": label} for i in range(12) for label, text in LINES.items()
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def finetune_args(model_dir, data, run_dir, method, *extra):
    return [
        "finetune",
        f"--model={model_dir}",
        f"--run_dir={run_dir}",
        f"--method={method}",
        f"--data.source={data}",
        "--data.template={text}. It is about",
        "--data.max_length=24",
        "--train.max_steps=4",
        "--train.batch_size=4",
        "--train.warmup_steps=1",
        "--train.eval_every=4",
        "--train.lr=1e-2",
        "--train.log_every=1",
        *extra,
    ]


@pytest.mark.parametrize(
    "method, extra",
    [
        ("lora", ["--delta.r=4"]),
        ("adapter", ["--delta.bottleneck", "8"]),
        ("bitfit", []),
        ("qlora", ["--delta.r=4", "--train.optimizer=paged_adamw"]),
        ("qlora", ["--train.optimizer=adamw8bit", "--train.gradient_checkpointing=true"]),
        ("none", []),
        ("full", []),
    ],
)
def test_finetune_each_method_saves_only_its_delta(
    tiny_model_dir, labelled, tmp_path, method, extra, capsys
):
    run = tmp_path / method
    assert main(finetune_args(tiny_model_dir, labelled, run, method, *extra)) == 0
    out = capsys.readouterr().out
    assert "trainable of" in out and "test_accuracy" in out
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["labels"] == ["be", "the"]
    assert (run / "delta").exists() == (method not in ("full", "none"))
    if method not in ("full", "none"):
        assert results["trainable"] < results["total"]


def test_unknown_method_lists_the_registered_ones(tiny_model_dir, labelled, tmp_path, capsys):
    assert main(finetune_args(tiny_model_dir, labelled, tmp_path / "x", "magic")) == 2
    err = capsys.readouterr().err
    assert "full" in err and "lora" in err and "adapter" in err


def test_unknown_delta_field_is_named(tiny_model_dir, labelled, tmp_path, capsys):
    assert (
        main(finetune_args(tiny_model_dir, labelled, tmp_path / "x", "lora", "--delta.rank=4")) == 2
    )
    assert "lora.rank" in capsys.readouterr().err


def test_encoding_cuts_the_text_to_fit_and_collate_left_pads(tiny_model_dir):
    from lmforge.data.labelled import Example

    tok = load_tokenizer(tiny_model_dir)
    ex = [Example("To be or not to be " * 20, "b", "x"), Example("The", "a", "y")]
    rows = encode_examples(ex, tok, "Q: {text} A:", ["a", "b"], max_length=16, reserve=2)
    assert len(rows[0][0]) == 14 and rows[0][1] == 1 and rows[1][1] == 0
    assert tok.decode(rows[0][0]).startswith("Q: To be") and tok.decode(rows[0][0]).endswith(" A:")
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].shape == (2, 14)
    assert batch["attention_mask"][1].tolist() == [0] * (14 - len(rows[1][0])) + [1] * len(
        rows[1][0]
    )
    assert batch["input_ids"][1, -len(rows[1][0]) :].tolist() == rows[1][0]
    with pytest.raises(ConfigError, match="not in data.labels"):
        encode_examples([Example("x", "zzz", "f:3")], tok, "{text}", ["a"], 8)
    words = LabelWords.encode(tok, ["fortune", "fortunes"])  # one is the other's start: fine
    assert words.sequences[0] != words.sequences[1] and words.chars == [8, 9]


def test_example_batches_resume_exactly():
    rows = [([i, i + 1], i % 2) for i in range(10)]
    a = ExampleBatches(rows, 3, pad_id=0, seed=1)
    for _ in range(4):
        a.next_batch()
    b = ExampleBatches(rows, 3, pad_id=0, seed=1)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(5):
        assert a.next_batch()["input_ids"].tolist() == b.next_batch()["input_ids"].tolist()


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "data.jsonl"
    rows = [
        {"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"}
        for w in ("be", "not", "the", "to", "or", "of", "and", "a")
    ] * 3
    rows.append({"instruction": "Broken", "output": ""})  # an empty answer: skipped, counted
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("pack", [False, True])
def test_sft_trains_on_instructions_and_saves_the_delta(
    tiny_model_dir, instructions, tmp_path, pack, capsys
):
    run = tmp_path / "sft"
    args = finetune_args(tiny_model_dir, instructions, run, "lora", "--task=sft")
    args += ["--data.max_length=48", f"--data.pack={str(pack).lower()}", "--data.holdout=4"]
    assert main(args) == 2  # the malformed record stops the run, naming its line
    assert "data.jsonl:25" in capsys.readouterr().err
    assert main([*args, "--data.skip_bad=true"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["records"] == 8 and results["skipped"] == 1 and results["duplicates"] == 16
    assert results["train_examples"] == 6 and results["val_examples"] == 2
    assert results["val_loss"] > 0 and (run / "delta" / "delta_config.json").exists()


def test_results_say_how_the_data_was_split(tiny_model_dir, labelled, tmp_path):
    run = tmp_path / "split"
    assert main(finetune_args(tiny_model_dir, labelled, run, "lora")) == 0
    splits = json.loads((run / "results.json").read_text())["splits"]
    assert {k: splits[k]["examples"] for k in ("train", "validation", "test")} == {
        "train": 16, "validation": 4, "test": 4
    }  # fmt: skip
    assert splits["test"]["from"] == f"{labelled} (stratified split, seed 0)"


def test_a_separate_test_file_and_the_source_as_test_set(
    tiny_model_dir, labelled, tmp_path, capsys
):
    held = tmp_path / "held.jsonl"
    held.write_text('{"text": "To be or not 99", "label": "be"}\n')
    run = tmp_path / "held"
    assert main(finetune_args(tiny_model_dir, labelled, run, "lora", f"--data.test={held}")) == 0
    splits = json.loads((run / "results.json").read_text())["splits"]
    assert splits["test"] == {"examples": 1, "from": str(held)}
    args = finetune_args(
        tiny_model_dir, labelled, tmp_path / "x", "lora", f"--data.test={labelled}"
    )
    assert main(args) == 2
    assert "measured on training data" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
