"""Multi-token prediction: head j is scored on the labels shifted by j; the heads save and load."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.hf import load_hf_dir, save_hf_dir
from lmforge.model.loss import IGNORE_INDEX, shift_labels
from lmforge.model.mtp import HEADS_FILE
from lmforge.train import TrainConfig, build_objective

VOCAB, B, T = 97, 2, 12


def setup(n_future=3):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=VOCAB))
    cfg = TrainConfig(objective="multi-token", objective_options={"n_future": n_future})
    objective = build_objective(cfg, model)
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, 7] = IGNORE_INDEX  # an ignored label is ignored by every head that would see it
    return model, objective, {"input_ids": ids, "labels": labels}


def test_shift_labels_moves_the_labels_left_by_j():
    labels = torch.tensor([[10, 11, 12, 13, 14]])
    assert shift_labels(labels, 1).tolist() == [[11, 12, 13, 14, -100]]
    assert shift_labels(labels, 3).tolist() == [[13, 14, -100, -100, -100]]


def test_head_j_is_scored_against_the_token_j_ahead():
    model, objective, batch = setup()
    losses = objective.head_losses(model, batch)
    trunk = model.trunk(batch["input_ids"])
    for j, loss in enumerate(losses, start=1):
        logits = model.lm_head(model.model.norm(objective.heads.hidden(trunk, j)))  # (B, T, V)
        rows, targets = logits[:, : T - j], batch["labels"][:, j:]  # position t ↔ token t+j
        keep = targets != IGNORE_INDEX
        expected = F.cross_entropy(rows[keep], targets[keep])
        assert torch.allclose(loss, expected, atol=1e-5), j
    assert torch.allclose(losses[0], model(**batch).loss, atol=1e-6)  # head 1 is the model
    total = objective(model, batch)
    assert torch.allclose(total, sum(losses) / 3, atol=1e-6)
    total.backward()
    assert all(p.grad is not None for p in objective.heads.parameters())


def test_heads_are_checkpointed_exported_beside_the_weights_and_loaded_back(tmp_path):
    from transformers import AutoModelForCausalLM

    model, objective, batch = setup(n_future=2)
    assert any(n.startswith("mtp_heads.blocks.0.") for n, _ in model.named_parameters())
    save_hf_dir(model, tmp_path / "out")
    assert (tmp_path / "out" / HEADS_FILE).is_file()
    loaded = load_hf_dir(tmp_path / "out")
    assert loaded.mtp_heads.n_future == 2
    for name, tensor in model.mtp_heads.state_dict().items():
        assert torch.equal(loaded.mtp_heads.state_dict()[name], tensor)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # the sidecar is ignored
    with torch.no_grad():
        native = loaded(batch["input_ids"]).logits  # inference: head 1
        assert torch.allclose(hf(batch["input_ids"]).logits, native, atol=1e-5)
        assert torch.allclose(native, model.eval()(batch["input_ids"]).logits, atol=1e-6)


def test_counts_and_refusals():
    model, objective, _ = setup(n_future=4)
    plain = CausalLM(preset("tiny", vocab_size=VOCAB))
    extra = objective.flops_per_token(model, T) - plain.flops_per_token(T)
    block = sum(p.numel() for p in model.model.layers[0].parameters() if p.dim() == 2)
    c = model.config
    assert extra == 3 * 3 * (2 * block + 2 * T * c.n_head * c.head_dim + 2 * VOCAB * c.d_model)
    with pytest.raises(ConfigError, match="n_future must be at least 2"):
        build_objective(
            TrainConfig(objective="multi-token", objective_options={"n_future": 1}), plain
        )
    with pytest.raises(ConfigError, match="native model"):
        build_objective(TrainConfig(objective="multi-token"), torch.nn.Linear(2, 2))
