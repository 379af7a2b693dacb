"""Alignment: reward models, DPO, PPO-RLHF and GRPO on the one loop and the one engine."""
