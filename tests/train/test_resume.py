"""Resuming the one loop: bit-exact for every optimizer, metrics cut at the checkpoint, a
chosen step, a corrupt latest passed over, and earlier checkpoints never deleted."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import CheckpointError, CheckpointWarning
from lmforge.train import train
from lmforge.train.checkpoint import latest_checkpoint, list_checkpoints
from tests.train.test_loop import RandomTokens, Recorder, config, make_model, val_batches

PAGED = {"page_bytes": 4096, "max_resident_bytes": 8192}  # 2 pages resident: pages move


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit", "paged_adamw"])
def test_resume_is_bitwise_exact(tmp_path, optimizer):
    # log_every=3: the step-4 checkpoint holds a half-filled loss average for the step-6 line.
    options = {**PAGED, "page_dir": str(tmp_path)} if optimizer == "paged_adamw" else {}
    cfg = config(max_steps=8, grad_accum=2, save_every=2, keep_last=2, eval_every=4, log_every=3)
    cfg.optimizer, cfg.optimizer_options = optimizer, options
    straight = Recorder()
    whole = make_model(dropout=0.1)
    expected = train(
        whole,
        RandomTokens(),
        cfg,
        tmp_path / "straight",
        val_data=val_batches(),
        callbacks=[straight],
        progress=False,
    )

    first = Recorder(fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        train(
            make_model(dropout=0.1),
            RandomTokens(),
            cfg,
            tmp_path / "resumed",
            val_data=val_batches(),
            callbacks=[first],
            progress=False,
        )
    assert latest_checkpoint(tmp_path / "resumed").name == "step-00000004"
    second = Recorder()
    resumed_model = make_model(seed=123, dropout=0.1)  # weights must come from the checkpoint
    result = train(
        resumed_model,
        RandomTokens(),
        cfg,
        tmp_path / "resumed",
        val_data=val_batches(),
        callbacks=[second],
        progress=False,
    )

    assert first.losses + second.losses == straight.losses
    assert [step for step, _ in second.losses] == [5, 6, 7, 8]
    drop = ("elapsed", "tokens_per_s")
    strip = lambda history: [{k: v for k, v in r.items() if k not in drop} for r in history]  # noqa: E731
    assert strip(result.history) == strip(expected.history)
    assert (result.val_loss, result.tokens) == (expected.val_loss, expected.tokens)
    for (name, a), b in zip(whole.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == [
        "step-00000006",
        "step-00000008",
    ]


def test_paged_adamw_in_the_loop_trains_exactly_like_adamw(tmp_path):
    cfg = config(max_steps=4, save_every=0, eval_every=0)
    models = []
    for optimizer in ("adamw", "paged_adamw"):
        cfg.optimizer = optimizer
        cfg.optimizer_options = {**PAGED, "page_dir": str(tmp_path)} if "paged" in optimizer else {}
        models.append(make_model())
        train(models[-1], RandomTokens(), cfg, tmp_path / optimizer, progress=False)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob("*.pages"))  # the loop closed the optimizer: file removed


def test_resume_drops_metrics_after_the_checkpoint(tmp_path):
    cfg = config(max_steps=5, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(
            make_model(),
            RandomTokens(),
            cfg,
            tmp_path,
            callbacks=[Recorder(fail_at=3)],
            progress=False,
        )
    metrics = tmp_path / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    with open(metrics, "a") as f:
        f.write('{"step": 3, "loss": 1.')  # a line torn by the crash
    result = train(make_model(), RandomTokens(), cfg, tmp_path, progress=False)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5] == [r["step"] for r in result.history]


def test_a_fresh_start_never_deletes_earlier_checkpoints(tmp_path):
    train(make_model(), RandomTokens(), config(max_steps=4, save_every=2), tmp_path, progress=False)
    before = [p.name for p in list_checkpoints(tmp_path)]
    with pytest.raises(CheckpointError, match="resume_from=latest, or start over in a new run_dir"):
        train(make_model(), RandomTokens(), config(resume_from="none"), tmp_path, progress=False)
    assert (
        [p.name for p in list_checkpoints(tmp_path)] == before == ["step-00000002", "step-00000004"]
    )
    result = train(
        make_model(), RandomTokens(), config(max_steps=2, resume_from="none"), tmp_path / "new"
    )
    assert [r["step"] for r in result.history] == [1, 2]


def test_resume_from_a_chosen_step_and_fall_back_from_a_corrupt_latest(tmp_path):
    cfg = config(max_steps=6, save_every=2, keep_last=0)
    full = train(make_model(), RandomTokens(), cfg, tmp_path / "full", progress=False)
    train(make_model(), RandomTokens(), cfg, tmp_path / "run", progress=False)
    # rerun from step 2: the same steps 3..6 as the uninterrupted run
    again = train(
        make_model(),
        RandomTokens(),
        config(**{**vars(cfg), "resume_from": "step-2"}),
        tmp_path / "run",
        progress=False,
    )
    assert [r["loss"] for r in again.history if "loss" in r] == [
        r["loss"] for r in full.history if "loss" in r
    ]
    with pytest.raises(CheckpointError, match="no such checkpoint.*have: step-00000002"):
        train(
            make_model(),
            RandomTokens(),
            config(**{**vars(cfg), "resume_from": "step-3"}),
            tmp_path / "run",
            progress=False,
        )
    latest = list_checkpoints(tmp_path / "run")[-1]
    (latest / "model.safetensors").write_bytes(b"torn")
    with pytest.warns(CheckpointWarning, match=f"{latest.name}.*resuming from .*step-00000004"):
        result = train(
            make_model(),
            RandomTokens(),
            config(**{**vars(cfg), "max_steps": 8}),
            tmp_path / "run",
            progress=False,
        )
    assert result.step == 8


# ---------------------------------------------------------------- divergence
