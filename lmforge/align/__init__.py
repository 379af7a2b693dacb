"""Alignment on the one training loop and the one generation engine: reward models, DPO,
PPO-RLHF and GRPO, with any delta method on native and transformers models (docs/align.md)."""

from lmforge.align.build import BuildPreferencesConfig, build_pairs, build_preferences
from lmforge.align.dpo import DPO_LOSSES, DPOObjective, DPOSettings, dpo_loss
from lmforge.align.grpo import GRPO_LOSSES, GRPOObjective, GRPOSettings, group_advantages
from lmforge.align.judges import RULES, RewardJudge, RuleJudge, make_judge
from lmforge.align.logprobs import Reference, sequence_logprobs, token_logprobs
from lmforge.align.ppo import PolicyWithValue, PPOObjective, PPOSettings, gae
from lmforge.align.prompts import PROMPT_SETS, load_prompts
from lmforge.align.reward import RewardModel, RewardObjective, RewardSettings, bradley_terry_loss
from lmforge.align.rollout import RolloutSettings, RolloutSource, sample_replies
from lmforge.align.store import load_reward_model, load_trained, save_trained

__all__ = [
    "DPO_LOSSES",
    "GRPO_LOSSES",
    "PROMPT_SETS",
    "RULES",
    "BuildPreferencesConfig",
    "DPOObjective",
    "DPOSettings",
    "GRPOObjective",
    "GRPOSettings",
    "PPOObjective",
    "PPOSettings",
    "PolicyWithValue",
    "Reference",
    "RewardJudge",
    "RewardModel",
    "RewardObjective",
    "RewardSettings",
    "RolloutSettings",
    "RolloutSource",
    "RuleJudge",
    "bradley_terry_loss",
    "build_pairs",
    "build_preferences",
    "dpo_loss",
    "gae",
    "group_advantages",
    "load_prompts",
    "load_reward_model",
    "load_trained",
    "make_judge",
    "sample_replies",
    "save_trained",
    "sequence_logprobs",
    "token_logprobs",
]
