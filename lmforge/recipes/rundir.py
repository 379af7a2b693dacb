"""A run directory keeps the config that made it, and a resume keeps its word.

    run_dir/config.yaml   the fully resolved config of the run, written only once the
                          requested config is known to fit the run that is already there

A run with checkpoints resumes only under its own settings. A few settings do not change
what the run computes and may differ (RESUMABLE: train for longer, validate, log or save
at another cadence, on another device or number of processes, sharded or not); anything
else — tokenizer, corpus, shapes, sequence length, seed, optimizer, schedule, method — is
refused before anything is written, naming every field that differs and the two ways out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.config import from_dict, read_yaml, save_yaml, to_dict
from lmforge.errors import ConfigError
from lmforge.train.checkpoint import list_checkpoints

CONFIG_FILE = "config.yaml"

# Settings that a resumed run may change: they do not change the updates it computes.
RESUMABLE = frozenset(
    {
        "train.max_steps",
        "train.eval_every",
        "train.eval_batches",
        "train.log_every",
        "train.save_every",
        "train.keep_last",
        "train.device",
        "train.distributed",
        "nproc",
        "train.resume_from",
        "sample_prompt",
        "sample_tokens",
    }
)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and not name.endswith(("delta", "options")):
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


def differences(stored: Any, requested: Any, ignore: frozenset[str] = frozenset()) -> list[str]:
    """`field: stored → requested` for every field that differs, but those in `ignore`."""
    old, new = _flat(to_dict(stored)), _flat(to_dict(requested))
    return [
        f"{name}: {old.get(name)!r} → {new.get(name)!r}"
        for name in sorted(set(old) | set(new))
        if name not in ignore and old.get(name) != new.get(name)
    ]


def check_resume(cfg: Any, derived: frozenset[str] = frozenset()) -> bool:
    """Whether `cfg` resumes the run in `cfg.run_dir` (it has checkpoints and resume_from is
    not none); if so, refuse a config that differs from the run's own in anything but
    RESUMABLE and `derived` (fields the recipe fills in later, such as a vocabulary size
    taken from the tokenizer). Writes nothing."""
    run_dir = Path(cfg.run_dir)
    stored_file = run_dir / CONFIG_FILE
    if resumes(cfg) and stored_file.is_file():
        stored = from_dict(type(cfg), read_yaml(stored_file))
        changed = differences(stored, cfg, RESUMABLE | derived)
        if changed:
            raise ConfigError(
                f"{run_dir} holds a run made with other settings, which a resume cannot "
                "change:\n  " + "\n  ".join(changed),
                fix="undo those settings to resume it, or start a new run in another {run_dir}",
            )
    return resumes(cfg)


def resumes(cfg: Any) -> bool:
    """Whether running `cfg` continues the run in its run_dir (which has checkpoints)."""
    return bool(list_checkpoints(cfg.run_dir)) and cfg.train.resume_from != "none"


def save_config(cfg: Any) -> Path:
    """Write the run's config.yaml (after check_resume passed)."""
    path = Path(cfg.run_dir) / CONFIG_FILE
    save_yaml(cfg, path)
    return path
