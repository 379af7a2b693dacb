"""The alignment lab: its registration, every stage a valid `lmforge align ACTION` config at
both sizes, and the quick run end to end on SmolLM2."""

import json

import pytest

from lmforge import peft
from lmforge.eval.base import TASKS
from lmforge.lab import LABS, run_experiment
from lmforge.lab.alignment import settings, stage_configs
from lmforge.lab.alignment_eval import tax_tasks
from lmforge.recipes.align import ACTIONS


def test_the_lab_is_registered_with_its_sizes():
    exp = LABS.get("alignment")
    assert exp.minutes == 60 and "PPO-ptx" in exp.claim
    assert settings(True)["train"] == 4 and settings(False)["train"] == 96


@pytest.mark.parametrize("quick", [True, False])
def test_alignment_stages_are_valid_configs(tmp_path, quick):
    s = settings(quick)
    configs = stage_configs(tmp_path, s, tmp_path / "prompts.jsonl", tmp_path / "ptx")
    assert list(configs) == [
        "preferences",
        "reward",
        "dpo",
        "preferences-2",
        "dpo-2",
        "grpo",
        "dpo-grpo",
        "ppo",
        "ppo-ptx",
    ]
    for name, cfg in configs.items():
        assert cfg.method in ACTIONS, name  # the stage runs `lmforge align METHOD`
        cfg.validate()
        peft.build(cfg.delta_method, cfg.delta)
        if cfg.method in ("ppo", "grpo"):
            steps = cfg.rollout.steps_per_rollout(cfg.train.batch_size, cfg.train.grad_accum)
            assert steps >= 1 and cfg.rollout.prompts <= s["train"], name
    assert configs["ppo-ptx"].ppo.ptx_coef > 0 == configs["ppo"].ppo.ptx_coef
    assert configs["ppo"].judge == f"reward:{tmp_path / 'reward'}"
    # the second DPO round samples its pairs from the first round's model and continues it
    assert configs["preferences-2"].adapter == configs["dpo-2"].adapter == str(tmp_path / "dpo")
    assert configs["dpo-2"].data.preferences.startswith(configs["preferences-2"].run_dir)
    assert configs["dpo-grpo"].adapter == str(tmp_path / "dpo") and not configs["grpo"].adapter


@pytest.mark.slow
@pytest.mark.assets
def test_alignment_quick_on_smollm2(tmp_path):
    text = run_experiment("alignment", tmp_path / "lab", quick=True).read_text()
    assert "| SFT |" in text and "| PPO-PTX |" in text and "win rate" in text
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    evaluation = results["evaluation"]
    assert set(evaluation) == {"SFT", "DPO", "DPO-2", "GRPO", "DPO-GRPO", "PPO", "PPO-PTX"}
    assert evaluation["SFT"]["win_rate"] == 0.5 and evaluation["SFT"]["kl"] == 0.0
    assert all(r["ppl_shakespeare"] > 1 for r in evaluation.values())
    assert results["stages"]["preferences"]["pairs"] >= 1


@pytest.mark.parametrize("quick", [True, False])
def test_the_tax_measures_are_registered_tasks_with_their_limits(quick):
    s = settings(quick)
    tasks = tax_tasks(s)
    assert all(task in TASKS for task, _, _ in tasks.values())
    assert tasks["bbc_accuracy"][1].limit == s["bbc"]
    assert tasks["ppl_shakespeare"][1].perplexity.max_tokens == s["ppl_tokens"]
