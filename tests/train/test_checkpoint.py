"""Checkpoints: round trip (tied weights, optimizer, RNG), signatures, corruption, atomicity."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmforge.train.checkpoint as ckpt
from lmforge.errors import CheckpointError
from lmforge.model import CausalLM, preset
from lmforge.train.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lmforge.train.snapshot import restore_rng


def make_model(seed: int = 0, **overrides) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(preset("tiny", **{"vocab_size": 64, **overrides}))


def trained(seed: int = 0) -> tuple[CausalLM, torch.optim.AdamW]:
    """A tiny model with one AdamW step taken, so the optimizer has state."""
    model = make_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(seed))
    model(ids, labels=ids).loss.backward()
    opt.step()
    return model, opt


def test_round_trip_with_tied_embeddings_optimizer_and_rng(tmp_path):
    model, opt = trained(0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    path = save_checkpoint(tmp_path, 7, model, opt, {"data": {"pos": 12}})
    expected = (torch.rand(3), random.random(), np.random.rand())

    assert path == tmp_path / "checkpoints" / "step-00000007"
    stored = load_file(path / "model.safetensors")
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored

    other, other_opt = trained(1)
    state = load_checkpoint(path, other, other_opt)
    assert state["step"] == 7 and state["extra"] == {"data": {"pos": 12}}
    assert other.lm_head.weight is other.model.embed_tokens.weight
    for (name, a), b in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(a, b), name
    saved, loaded = opt.state_dict(), other_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for i, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, loaded["state"][i][key]), (i, key)

    restore_rng(state["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]


def test_only_trainable_parameters_are_saved(tmp_path):
    model = make_model(0)
    for name, p in model.named_parameters():
        p.requires_grad = "layers.1." in name
    path = save_checkpoint(tmp_path, 1, model, None, {})
    keys = set(load_file(path / "model.safetensors"))
    assert keys and all("layers.1." in k for k in keys)
    assert json.loads((path / "state.json").read_text())["signature"].keys() == keys

    target = make_model(1)
    frozen_before = target.model.embed_tokens.weight.clone()
    for name, p in target.named_parameters():
        p.requires_grad = "layers.1." in name
    load_checkpoint(path, target)
    assert torch.equal(target.model.embed_tokens.weight, frozen_before)
    assert torch.equal(
        target.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight
    )
    with pytest.raises(CheckpointError, match="without optimizer state"):
        load_checkpoint(
            path, target, torch.optim.AdamW([p for p in target.parameters() if p.requires_grad])
        )


def test_signature_mismatch_names_parameter_and_shapes(tmp_path):
    model, opt = trained(0)
    path = save_checkpoint(tmp_path, 1, model, opt, {})
    wider = make_model(0, vocab_size=80)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, wider)
    message = str(err.value)
    assert "'model.embed_tokens.weight'" in message
    assert "[64, 64]" in message and "[80, 64]" in message


def test_corrupt_files_name_the_file(tmp_path):
    model, opt = trained(0)
    path = save_checkpoint(tmp_path, 1, model, opt, {})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path, make_model(0))

    path = save_checkpoint(tmp_path, 2, model, opt, {})
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json"):
        load_checkpoint(path, make_model(0))


def test_interrupted_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model, opt = trained(0)
    first = save_checkpoint(tmp_path, 1, model, opt, {"n": 1}, keep_last=1)

    real_save_file = ckpt.save_file
    calls = []

    def dies_midway(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # model.safetensors is written, optimizer.safetensors is half-written
            real_save_file(tensors, filename)
            with open(filename, "r+b") as f:
                f.truncate(50)
            raise OSError("disk full")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model, opt, {"n": 2}, keep_last=1)

    assert latest_checkpoint(tmp_path) == first  # and keep_last=1 pruned nothing
    assert not checkpoint_dir(tmp_path, 2).exists()
    assert load_checkpoint(first, make_model(3))["extra"] == {"n": 1}

    # A crash (no cleanup) leaves a temp dir; a step dir without state.json is incomplete.
    (tmp_path / "checkpoints" / ".tmp-step-00000009-x").mkdir()
    (checkpoint_dir(tmp_path, 8)).mkdir()
    (checkpoint_dir(tmp_path, 8) / "model.safetensors").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == first
    assert list_checkpoints(tmp_path) == [first]


def test_keep_last_prunes_after_the_new_checkpoint_is_complete(tmp_path):
    model, opt = trained(0)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model, opt, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    save_checkpoint(tmp_path, 6, model, opt, {}, keep_last=0)
    assert len(list_checkpoints(tmp_path)) == 3


def test_missing_checkpoint_and_non_json_extra(tmp_path):
    model, opt = trained(0)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", model)
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, 1, model, opt, {"bad": object()})
    assert latest_checkpoint(tmp_path) is None
