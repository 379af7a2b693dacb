"""Objectives the one loop optimises, (model, batch) → loss, chosen by `train.objective`:

    causal-lm        the model's next-token loss (the default)
    span-corruption  T5's span corruption in the decoder: sentinels, prefix-LM mask
    prefix-lm        UL2's S-denoiser alone: a bidirectional prefix, its continuation
    ul2              UL2's mixture of denoisers R, S, X with mode tokens (denoise.py)
    multi-token      heads predicting t+1..t+n from one trunk (multi_token.py)
    + train.teacher  knowledge inheritance from a trained model, on top of causal-lm
                     (distill.py)

`train.objective_options` holds the chosen objective's settings, checked field by field.
Besides being called, an objective may have `validation` (the objective validation reports
instead of itself: every one here reports the next-token loss, so runs compare) and
`at_step(step)` (called by the loop before each update, for a weight schedule).
The classification objective (finetune's) is built by its task, not by name.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lmforge.config import from_dict
from lmforge.errors import AssetError, ConfigError, DataError
from lmforge.hub import load_model, load_tokenizer
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.objectives import denoise, multi_token  # noqa: F401  (they register)
from lmforge.train.objectives.base import OBJECTIVES, NoOptions, ObjectiveKind
from lmforge.train.objectives.classification import (
    ClassificationObjective,
    LabelWords,
    accuracy,
    class_scores,
)
from lmforge.train.objectives.distill import (
    InheritanceSettings,
    KnowledgeInheritance,
    TeacherCache,
    check_vocabulary,
    fingerprint,
    kd_loss,
)
from lmforge.train.state import Objective
from lmforge.train.validation import default_objective

OBJECTIVES.add(
    "causal-lm",
    ObjectiveKind("next-token prediction", NoOptions, lambda o, m, t: default_objective),
)

__all__ = [
    "OBJECTIVES",
    "ClassificationObjective",
    "KnowledgeInheritance",
    "LabelWords",
    "ObjectiveKind",
    "accuracy",
    "build_objective",
    "class_scores",
    "kd_loss",
    "objective_tokens",
]


def _kind(cfg: TrainConfig) -> tuple[ObjectiveKind, object]:
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(
            f"train.objective {cfg.objective!r} is unknown",
            fix="choose {objective} from " + ", ".join(OBJECTIVES.names()),
        )
    kind = OBJECTIVES.get(cfg.objective)
    return kind, from_dict(kind.options, cfg.objective_options, "train.objective_options")


def objective_tokens(cfg: TrainConfig) -> list[str]:
    """Special tokens the objective needs in the tokenizer (sentinels, mode tokens)."""
    kind, options = _kind(cfg)
    return kind.special_tokens(options)


def build_objective(
    cfg: TrainConfig, model: nn.Module, tokenizer: Tokenizer | None = None
) -> Objective:
    """The objective `cfg` names, built for `model` (which it may give extra heads), wrapped
    in knowledge inheritance when cfg.teacher is set."""
    kind, options = _kind(cfg)
    objective = kind.build(options, model, tokenizer)
    if not cfg.teacher:
        return objective
    if cfg.objective != "causal-lm":
        raise ConfigError(
            f"a teacher distils the next-token distribution; train.objective is {cfg.objective}",
            fix="use {objective=causal-lm} with {teacher}, or drop the teacher",
        )
    return inheritance(cfg, model, tokenizer)


def inheritance(
    cfg: TrainConfig, model: nn.Module, tokenizer: Tokenizer | None
) -> KnowledgeInheritance:
    """Load cfg.teacher, check it shares the student's vocabulary, and build the objective."""
    teacher = load_model(cfg.teacher, backend=cfg.teacher_backend)
    check_vocabulary(teacher, model, cfg.teacher)
    if tokenizer is not None:
        try:
            theirs = load_tokenizer(cfg.teacher)
        except (AssetError, DataError):
            theirs = None  # a teacher directory without tokenizer files: sizes were checked
        if theirs is not None and theirs.hf.get_vocab() != tokenizer.hf.get_vocab():
            raise ConfigError(
                f"teacher {cfg.teacher} has another tokenizer than the student (same size, "
                "other tokens)",
                fix="give the student the teacher's tokenizer ({tokenizer.path})",
            )
    settings = InheritanceSettings(
        weight=cfg.kd_weight,
        schedule=cfg.kd_schedule,
        horizon=cfg.kd_decay_steps or cfg.max_steps,
        temperature=cfg.kd_temperature,
        top_k=cfg.kd_top_k,
    )
    cache = None
    if cfg.kd_cache:
        cache = TeacherCache(Path(cfg.kd_cache), fingerprint(teacher), cfg.kd_top_k)
    return KnowledgeInheritance(teacher, settings, cache)
