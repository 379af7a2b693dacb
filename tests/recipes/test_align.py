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
from lmforge.recipes.chat import ChatConfig, run_chat

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


def run(action: str, model, run_dir, flags: str) -> int:
    """`lmforge align ACTION --model D --run_dir R` plus space-separated flags."""
    args = [f"--model={model}", f"--run_dir={run_dir}", *flags.split()]
    return main(["align", action, *args, *STEPS])


def metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_reward_model_then_ppo_with_it_as_the_judge(tiny_model_dir, data, tmp_path):
    reward = tmp_path / "reward"
    flags = f"--data.preferences={data / 'pairs.jsonl'} --data.holdout=4 --delta.r=4"
    flags += " --train.max_steps=3 --train.batch_size=3 --train.lr=1e-2"
    assert run("reward", tiny_model_dir, reward, flags) == 0
    results = json.loads((reward / "results.json").read_text())
    assert results["held_out"]["pairs"] == 3 and 0 <= results["held_out"]["accuracy"] <= 1
    assert {"reward_chosen", "margin", "accuracy"} <= set(metrics(reward)[-1])
    assert (reward / "score.safetensors").is_file() and (reward / "delta").is_dir()
    assert (reward / "align.png").read_bytes()[:4] == b"\x89PNG"

    ppo = tmp_path / "ppo"
    corpus = tiny_model_dir.parent.parent / "corpus.txt"
    flags = f"--data.prompts={data / 'prompts.jsonl'} --judge=reward:{reward}"
    flags += " --rollout.prompts=2 --rollout.samples=1 --rollout.max_new_tokens=6"
    flags += f" --ppo.ptx_coef=0.5 --data.ptx={corpus} --data.ptx_length=16 --delta.r=4"
    flags += " --train.max_steps=2 --train.batch_size=2"
    assert run("ppo", tiny_model_dir, ppo, flags) == 0
    last = metrics(ppo)[-1]
    assert {"reward", "kl", "value_loss", "ptx_loss", "response_length"} <= set(last)
    assert last["reward"] != 0  # the reward model's score
    assert set(load_file(ppo / "value.safetensors")) == {"weight", "bias"}


@pytest.mark.parametrize("backend, tuning", [("native", "lora"), ("hf", "full")])
def test_dpo_and_chat_with_the_result(tiny_model_dir, data, tmp_path, backend, tuning):
    out = tmp_path / "dpo"
    flags = f"--backend={backend} --delta_method={tuning} --delta.r=4 --data.holdout=4"
    flags += f" --data.preferences={data / 'pairs.jsonl'} --dpo.beta=0.5"
    flags += " --dpo.reference=precomputed --train.max_steps=3 --train.batch_size=3"
    assert run("dpo", tiny_model_dir, out, flags + " --train.lr=1e-3") == 0
    lines = metrics(out)
    assert lines[0]["margin"] == pytest.approx(0.0, abs=1e-5)  # π = π_ref at the first step
    assert lines[-1]["margin"] > 0 and lines[-1]["accuracy"] > 0
    held = json.loads((out / "results.json").read_text())["held_out"]
    assert held["margin"] > 0
    model, adapter = (out / "model", "") if tuning == "full" else (tiny_model_dir, str(out))
    cfg = ChatConfig(model=str(model), adapter=adapter, max_new_tokens=4, temperature=0.0)
    stdout = io.StringIO()
    history = run_chat(cfg, stdin=io.StringIO("To be?\n/exit\n"), stdout=stdout)
    assert history[-1]["role"] == "assistant" and "assistant>" in stdout.getvalue()


JUDGE = "--judge=python:tests.recipes.test_align:reply_length"


def test_grpo_resumes_mid_rollout_exactly(tiny_model_dir, data, tmp_path):
    flags = f"--backend=hf --data.prompts={data / 'prompts.jsonl'} --data.holdout=0 {JUDGE}"
    flags += " --rollout.prompts=2 --rollout.samples=2 --rollout.epochs=2 --grpo.beta=0.1"
    flags += " --rollout.max_new_tokens=6 --delta.r=4 --train.batch_size=2 --train.lr=1e-2"
    flags += " --train.save_every=1 --train.max_steps="
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run("grpo", tiny_model_dir, whole, flags + "6") == 0  # 4 updates per rollout
    assert run("grpo", tiny_model_dir, parts, flags + "2") == 0  # stops inside rollout 1
    assert run("grpo", tiny_model_dir, parts, flags + "6") == 0  # resumes from step-2
    a, b = metrics(whole), metrics(parts)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["reward"] for r in a] == [r["reward"] for r in b]
    assert len({r["reward"] for r in a}) > 1 and any(r["kl"] > 0 for r in a)
    wa = load_file(whole / "delta" / "delta_model.safetensors")
    wb = load_file(parts / "delta" / "delta_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_build_preferences_then_dpo_on_them(tiny_model_dir, data, tmp_path):
    built = tmp_path / "built"
    flags = f"--data.prompts={data / 'prompts.jsonl'} {JUDGE} --rollout.samples=3"
    flags += " --rollout.max_new_tokens=8"
    assert run("build-preferences", tiny_model_dir, built, flags) == 0
    path = built / "preferences.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and all(r["meta"]["chosen_score"] > r["meta"]["rejected_score"] for r in records)
    flags = f"--data.preferences={path} --data.holdout=0 --delta.r=4 --train.max_steps=1"
    assert run("dpo", tiny_model_dir, tmp_path / "dpo", flags + " --train.batch_size=1") == 0


def test_a_second_dpo_round_samples_and_continues_the_first(tiny_model_dir, data, tmp_path):
    first, built, second = tmp_path / "first", tmp_path / "built", tmp_path / "second"
    flags = f"--data.preferences={data / 'pairs.jsonl'} --data.holdout=0 --delta.r=4"
    flags += " --train.batch_size=3 --dpo.beta=0.5 --train.max_steps="
    assert run("dpo", tiny_model_dir, first, flags + "3 --train.lr=1e-2") == 0
    assert metrics(first)[-1]["margin"] > 0.1  # against the base: the first round moved
    sample = f"--data.prompts={data / 'prompts.jsonl'} {JUDGE} --rollout.samples=3"
    sample += f" --rollout.max_new_tokens=8 --adapter={first}"
    assert run("build-preferences", tiny_model_dir, built, sample) == 0
    pairs = (built / "preferences.jsonl").read_text()
    flags = flags.replace(str(data / "pairs.jsonl"), str(built / "preferences.jsonl"))
    assert run("dpo", tiny_model_dir, second, f"{flags}1 --train.lr=1e-9 --adapter={first}") == 0
    assert metrics(second)[0]["margin"] == pytest.approx(0.0, abs=1e-5)  # π_ref = round one
    a = load_file(first / "delta" / "delta_model.safetensors")
    b = load_file(second / "delta" / "delta_model.safetensors")
    assert a.keys() == b.keys() and any(v.abs().max() > 0 for v in a.values())
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # it starts from round one
    base = tmp_path / "base"  # the same sampling from the base model gives other pairs
    assert run("build-preferences", tiny_model_dir, base, sample.split(" --adapter")[0]) == 0
    assert pairs and pairs != (base / "preferences.jsonl").read_text()


def test_config_errors_name_the_flag(tiny_model_dir, tmp_path, capsys):
    assert main(["align", "dpo", f"--model={tiny_model_dir}"]) == 2
    assert "give a file: --data.preferences=FILE" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a"}\n')
    assert run("reward", tiny_model_dir, tmp_path / "r", f"--data.preferences={bad}") == 2
    assert "bad.jsonl:1: rejected: missing" in (err := capsys.readouterr().err)
    assert "pass --data.skip_bad to skip it" in err
    assert main(["align", "ppo", "--data.prompts=x", "--ppo.ptx_coef=0.5"]) == 2
    assert "name one: --data.ptx=shakespeare, or --ppo.ptx_coef=0" in capsys.readouterr().err
    assert main(["align", "dpo", "--method=ppo"]) == 2  # the action sets the method
    assert "unknown flag --method" in capsys.readouterr().err
