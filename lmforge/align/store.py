"""What an alignment run keeps, and how it comes back — the same ways as any model or delta:

run_dir/delta/              the trained delta          lmforge chat|eval|generate --adapter RUN_DIR
run_dir/model/              a fully trained model      lmforge chat --model RUN_DIR/model
run_dir/score.safetensors   a reward model's head      load_reward_model(RUN_DIR)
run_dir/value.safetensors   PPO's value head
run_dir/trained.json        {"base", "backend", "method"}: what the delta or model sits on
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.align.reward import RewardModel
from lmforge.atomic import atomic_write, atomic_write_json
from lmforge.errors import CheckpointError
from lmforge.hub import load_model, resolve
from lmforge.model.gpt import CausalLM
from lmforge.model.hf import save_hf_dir
from lmforge.peft import DeltaMethod, load_adapter

TRAINED_FILE = "trained.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_trained(
    model: nn.Module, delta: DeltaMethod | None, run_dir: str | Path, base: str, backend: str
) -> Path:
    """The delta (run_dir/delta) or, trained fully, the whole model (run_dir/model) with the
    base's tokenizer; trained.json names the base. Returns where the weights went."""
    run_dir = Path(run_dir)
    if delta is not None:
        out = delta.save(run_dir / "delta")
        method = delta.name
    else:
        out, method = run_dir / "model", "full"
        if isinstance(model, CausalLM):
            save_hf_dir(model, out, tokenizer_dir=resolve(base))
        else:
            model.save_pretrained(str(out))
            for name in TOKENIZER_FILES:
                source = resolve(base) / name
                if source.is_file():
                    atomic_write(out / name, lambda p, s=source: p.write_bytes(s.read_bytes()))
    meta = {"base": base, "backend": backend, "method": method}
    atomic_write_json(run_dir / TRAINED_FILE, meta)
    return out


def trained_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / TRAINED_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: {run_dir} is not the directory of a finished alignment run"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def load_trained(run_dir: str | Path, backend: str | None = None) -> nn.Module:
    """The model a run trained: its base with the delta applied, or the whole saved model."""
    meta = trained_meta(run_dir)
    backend = backend or meta["backend"]
    if meta["method"] == "full":
        return load_model(Path(run_dir) / "model", backend=backend)
    return load_adapter(run_dir, load_model(meta["base"], backend=backend)).model.eval()


def save_head(head: nn.Module, path: str | Path) -> Path:
    tensors = {n: t.detach().cpu().contiguous() for n, t in head.state_dict().items()}
    atomic_write(Path(path), lambda p: save_file(tensors, str(p)))
    return Path(path)


def load_head(head: nn.Module, path: str | Path) -> nn.Module:
    try:
        state = load_file(str(path))
    except (OSError, Exception) as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read the head ({e})") from None
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the head does not fit this model ({e})") from None
    return head


def load_reward_model(run_dir: str | Path, backend: str | None = None) -> RewardModel:
    """A reward model saved by `lmforge align --method reward` (in eval mode)."""
    score = Path(run_dir) / "score.safetensors"
    if not score.is_file():
        raise CheckpointError(
            f"{score} is missing: {run_dir} is not a reward model run (lmforge align "
            "--method reward writes one)"
        )
    reward = RewardModel(load_trained(run_dir, backend))
    load_head(reward.score, score)
    return reward.eval()
