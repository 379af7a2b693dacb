"""`lmforge eval` end to end on the tiny native model: results JSON + markdown, adapters,
perplexity, and the errors a user can cause."""

import json

import pytest

from lmforge.cli import main
from lmforge.eval import TASKS, ChoiceTask, register_task
from lmforge.prompting import PromptFormat, Sample, Template, Verbalizer

LINES = {"fortune": "The slings and arrows of outrageous fortune", "question": "To be or not"}
SAMPLES = [Sample({"text": t}, label, origin=label) for label, t in LINES.items()] * 3

if "cli-choice" not in TASKS:
    register_task(
        ChoiceTask(
            "cli-choice",
            "a two-label task for the CLI test",
            test=lambda: SAMPLES,
            pool=lambda: SAMPLES,
            format=PromptFormat(Template("{text}. It is about")),
            verbalizer=Verbalizer.identity(["fortune", "question"]),
        )
    )


def run_eval(model_dir, out, *extra):
    return main(["eval", "--model", str(model_dir), "--out", str(out), *extra])


def read(out):
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_eval_generation_task_writes_json_and_markdown(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "arith"
    assert (
        run_eval(tiny_model_dir, out, "--task", "arithmetic-1", "--shots", "2", "--limit", "3") == 0
    )
    assert "arithmetic-1: accuracy" in capsys.readouterr().out
    results, table = read(out)
    assert results["meta"] == {"model": str(tiny_model_dir), "backend": "native", "adapter": ""}
    (r,) = results["results"]
    assert r["task"] == "arithmetic-1" and r["n"] == 3 and r["settings"]["shots"] == 2
    assert r["example_prompt"].count("Question:") == 3
    assert (
        f"| arithmetic-1 | 2-shot random, direct | 3 | accuracy | {r['metrics']['accuracy']:.4f} |"
        in table
    )
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["task"] == "arithmetic-1"
    assert (out / "config.yaml").is_file()


def test_eval_choice_task_calibrated(tiny_model_dir, tmp_path):
    out = tmp_path / "choice"
    args = [
        "--task",
        "cli-choice",
        "--shots",
        "2",
        "--selection",
        "balanced",
        "--calibrate",
        "true",
    ]
    assert run_eval(tiny_model_dir, out, *args) == 0
    results, table = read(out)
    (r,) = results["results"]
    assert r["n"] == 6 and "| cli-choice | 2-shot balanced, calibrated | 6 | accuracy |" in table


@pytest.fixture(scope="module")
def finetuned(tiny_model_dir, tmp_path_factory):
    """Fine-tuning runs of the tiny model: LoRA (modules swapped) and prompt tuning (a wrapper)."""
    root = tmp_path_factory.mktemp("ft")
    data = root / "data.jsonl"
    rows = [
        {"text": text, "label": label}
        for text, label in [(LINES["fortune"], "the"), (LINES["question"], "be")]
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 8))
    runs = {}
    for method, extra in [("lora", ["--delta.r=4"]), ("prompt", ["--delta.num_virtual_tokens=3"])]:
        runs[method] = root / method
        args = [
            "finetune", f"--model={tiny_model_dir}", f"--run_dir={runs[method]}",
            f"--method={method}",
            f"--data.source={data}", "--data.template={text}. It is about", "--data.max_length=24",
            "--train.max_steps=3", "--train.batch_size=4", "--train.warmup_steps=1",
            "--train.eval_every=3", "--train.lr=5e-2", *extra,
        ]  # fmt: skip
        assert main(args) == 0
    return runs


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_eval_with_an_adapter(tiny_model_dir, finetuned, tmp_path, method):
    base, tuned = tmp_path / "base", tmp_path / method
    assert run_eval(tiny_model_dir, base, "--task", "cli-choice") == 0
    assert (
        run_eval(tiny_model_dir, tuned, "--task", "cli-choice", "--adapter", str(finetuned[method]))
        == 0
    )
    results, table = read(tuned)
    assert results["meta"]["adapter"] == str(finetuned[method])
    assert table.startswith(f"# Evaluation of {tiny_model_dir} + {finetuned[method]}")
    probs = [
        json.loads(x)["probabilities"]
        for x in (base / "predictions.jsonl").read_text().splitlines()
    ]
    tuned_probs = [
        json.loads(x)["probabilities"]
        for x in (tuned / "predictions.jsonl").read_text().splitlines()
    ]
    assert probs != tuned_probs  # the delta was applied


def test_eval_perplexity_on_a_file(tiny_model_dir, corpus, tmp_path):
    out = tmp_path / "ppl"
    args = [
        "--task",
        "perplexity",
        "--data",
        str(corpus),
        "--max_tokens",
        "300",
        "--max_length",
        "64",
    ]
    assert run_eval(tiny_model_dir, out, *args) == 0
    (r,) = read(out)[0]["results"]
    assert r["n"] == 300 and r["settings"]["window"] == 64
    assert r["metrics"]["perplexity"] == pytest.approx(2.718281828 ** r["metrics"]["nll"], rel=1e-6)


def test_eval_errors_name_the_problem(tiny_model_dir, tmp_path, capsys):
    assert run_eval(tiny_model_dir, tmp_path / "x", "--task", "sst2") == 2
    assert "unknown task 'sst2'; registered: arithmetic" in capsys.readouterr().err
    assert run_eval(tiny_model_dir, tmp_path / "x", "--task", "cli-choice", "--shots", "9") == 2
    assert "shots=9 asks for more demonstrations than the pool holds (6)" in capsys.readouterr().err
    assert (
        run_eval(tiny_model_dir, tmp_path / "x", "--task", "cli-choice", "--adapter", str(tmp_path))
        == 2
    )
    assert "holds no adapter" in capsys.readouterr().err
    assert run_eval(tiny_model_dir, tmp_path / "x", "--task", "perplexity") == 2
    assert "needs a corpus to score; give --data=CORPUS, a file or a folder" in (
        capsys.readouterr().err
    )
    assert main(["eval", "--task", "list"]) == 0
    assert "bbc-news             choice" in capsys.readouterr().out
