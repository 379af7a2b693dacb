"""`lmforge align` end to end on the tiny pretrained model: every method from the command line,
LoRA and full, native and transformers; the reward model as PPO's judge; build-preferences
feeding DPO; exact resume mid-rollout; chat with the aligned adapter."""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.data.preferences import PromptRecord

STEPS = ["--train.warmup_steps=0", "--train.schedule=constant", "--train.log_every=1"]


def reply_length(prompt: PromptRecord, reply: str) -> float:
    """A judge with spread for a model that cannot count yet: longer replies score higher."""
    return len(reply) / 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("align-data")
    pairs, prompts = [], []
    for i in range(12):
        question = f"To be or not {i}?" if i % 3 else f"生存还是毁灭 {i}?"
        pairs.append(
            {"prompt": question, "chosen": "To be, that is the question.", "rejected": f"Not {i}."}
        )
        prompts.append({"prompt": question, "answer": "to be"})
    (root / "pairs.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), "utf-8"
    )
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts), "utf-8"
    )
    return root


def run(args: list[str]) -> int:
    return main(["align", *args, *STEPS])


def metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_reward_model_then_ppo_with_it_as_the_judge(tiny_model_dir, data, tmp_path):
    reward = tmp_path / "reward"
    assert (
        run(
            [
                "--method=reward",
                f"--model={tiny_model_dir}",
                f"--run_dir={reward}",
                f"--data.preferences={data / 'pairs.jsonl'}",
                "--data.holdout=4",
                "--delta.r=4",
                "--train.max_steps=3",
                "--train.batch_size=3",
                "--train.lr=1e-2",
            ]
        )
        == 0
    )
    results = json.loads((reward / "results.json").read_text())
    assert results["held_out"]["pairs"] == 3 and 0 <= results["held_out"]["accuracy"] <= 1
    assert {"reward_chosen", "margin", "accuracy"} <= set(metrics(reward)[-1])
    assert (reward / "score.safetensors").is_file() and (reward / "delta").is_dir()
    assert (reward / "align.png").read_bytes()[:4] == b"\x89PNG"

    ppo = tmp_path / "ppo"
    assert (
        run(
            [
                "--method=ppo",
                f"--model={tiny_model_dir}",
                f"--run_dir={ppo}",
                f"--data.prompts={data / 'prompts.jsonl'}",
                f"--judge=reward:{reward}",
                "--rollout.prompts=2",
                "--rollout.samples=1",
                "--rollout.max_new_tokens=6",
                "--ppo.ptx_coef=0.5",
                "--data.ptx=" + str(tiny_model_dir.parent.parent / "corpus.txt"),
                "--data.ptx_length=16",
                "--delta.r=4",
                "--train.max_steps=2",
                "--train.batch_size=2",
            ]
        )
        == 0
    )
    last = metrics(ppo)[-1]
    assert {"reward", "kl", "value_loss", "ptx_loss", "response_length"} <= set(last)
    assert last["reward"] != 0  # the reward model's score
    assert set(load_file(ppo / "value.safetensors")) == {"weight", "bias"}


@pytest.mark.parametrize("backend, tuning", [("native", "lora"), ("hf", "full")])
def test_dpo_and_chat_with_the_result(tiny_model_dir, data, tmp_path, backend, tuning):
    out = tmp_path / "dpo"
    assert (
        run(
            [
                "--method=dpo",
                f"--model={tiny_model_dir}",
                f"--run_dir={out}",
                f"--backend={backend}",
                f"--delta_method={tuning}",
                "--delta.r=4",
                f"--data.preferences={data / 'pairs.jsonl'}",
                "--data.holdout=4",
                "--dpo.beta=0.5",
                "--dpo.reference=precomputed",
                "--train.max_steps=3",
                "--train.batch_size=3",
                "--train.lr=1e-3",
            ]
        )
        == 0
    )
    lines = metrics(out)
    assert lines[0]["margin"] == pytest.approx(0.0, abs=1e-5)  # π = π_ref at the first step
    assert lines[-1]["margin"] > 0 and lines[-1]["accuracy"] > 0
    held = json.loads((out / "results.json").read_text())["held_out"]
    assert held["margin"] > 0
    args = ["chat", "--max-new-tokens=4", "--temperature=0"]
    args += (
        [f"--model={out / 'model'}"]
        if tuning == "full"
        else [f"--model={tiny_model_dir}", f"--adapter={out}"]
    )
    from lmforge.recipes import chat

    parsed = __import__("lmforge.cli", fromlist=["build_parser"]).build_parser().parse_args(args)
    stdout = io.StringIO()
    history = chat.run_chat(parsed, stdin=io.StringIO("To be?\n/exit\n"), stdout=stdout)
    assert history[-1]["role"] == "assistant" and "assistant>" in stdout.getvalue()


def grpo_args(tiny_model_dir, data, run_dir, steps):
    return [
        "--method=grpo",
        f"--model={tiny_model_dir}",
        f"--run_dir={run_dir}",
        "--backend=hf",
        f"--data.prompts={data / 'prompts.jsonl'}",
        "--data.holdout=0",
        "--judge=python:tests.recipes.test_align:reply_length",
        "--rollout.prompts=2",
        "--rollout.samples=2",
        "--rollout.epochs=2",
        "--rollout.max_new_tokens=6",
        "--grpo.beta=0.1",
        "--delta.r=4",
        f"--train.max_steps={steps}",
        "--train.batch_size=2",
        "--train.save_every=1",
        "--train.lr=1e-2",
    ]


def test_grpo_resumes_mid_rollout_exactly(tiny_model_dir, data, tmp_path):
    whole = tmp_path / "whole"
    assert run(grpo_args(tiny_model_dir, data, whole, 6)) == 0  # 4 updates per rollout
    parts = tmp_path / "parts"
    assert run(grpo_args(tiny_model_dir, data, parts, 2)) == 0  # stops inside rollout 1
    assert run(grpo_args(tiny_model_dir, data, parts, 6)) == 0  # resumes from step-2
    a, b = metrics(whole), metrics(parts)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["reward"] for r in a] == [r["reward"] for r in b]
    assert len({r["reward"] for r in a}) > 1 and any(r["kl"] > 0 for r in a)
    wa = load_file(whole / "delta" / "delta_model.safetensors")
    wb = load_file(parts / "delta" / "delta_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_build_preferences_then_dpo_on_them(tiny_model_dir, data, tmp_path):
    built = tmp_path / "built"
    assert (
        run(
            [
                "--method=build-preferences",
                f"--model={tiny_model_dir}",
                f"--run_dir={built}",
                f"--data.prompts={data / 'prompts.jsonl'}",
                "--judge=python:tests.recipes.test_align:reply_length",
                "--rollout.samples=3",
                "--rollout.max_new_tokens=8",
            ]
        )
        == 0
    )
    path = built / "preferences.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and all(r["meta"]["chosen_score"] > r["meta"]["rejected_score"] for r in records)
    out = tmp_path / "dpo"
    assert (
        run(
            [
                "--method=dpo",
                f"--model={tiny_model_dir}",
                f"--run_dir={out}",
                f"--data.preferences={path}",
                "--data.holdout=0",
                "--delta.r=4",
                "--train.max_steps=1",
                "--train.batch_size=1",
            ]
        )
        == 0
    )


def test_config_errors_name_the_flag(tiny_model_dir, capsys):
    assert main(["align", "--method=dpo", f"--model={tiny_model_dir}"]) == 2
    assert "--data.preferences=FILE" in capsys.readouterr().err
    assert main(["align", "--method=rlhf", "--data.prompts=x"]) == 2
    assert "method 'rlhf' is unknown" in capsys.readouterr().err
