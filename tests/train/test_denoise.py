"""Span corruption and UL2's denoisers: the rows, the labels and the prefix-LM mask, exactly."""

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer
from lmforge.train import TrainConfig, build_objective, objective_tokens
from lmforge.train.objectives.denoise import (
    DENOISERS,
    SENTINEL,
    DenoisingOptions,
    corrupt_batch,
    prefix_lm_mask,
    specials,
)

TEXT = "人民日报一九九八年元旦献词，迈向充满希望的新世纪。To be, or not to be. " * 30


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer.train([TEXT], vocab_size=400)
    tok.add_special_tokens(denoising_tokens())
    return tok


def denoising_tokens() -> list[str]:
    return objective_tokens(TrainConfig(objective="ul2"))


def windows(tokenizer, B=4, T=48) -> torch.Tensor:
    ids = tokenizer.encode(TEXT)
    return torch.tensor([ids[i * T : (i + 1) * T] for i in range(B)])


def undo(prefix: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """The text the row came from: each sentinel in the prefix replaced by its span."""
    spans, current = {}, None
    for t in targets:
        if t in sentinels:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    return [x for t in prefix for x in (spans[t] if t in sentinels else [t])]


@pytest.mark.parametrize("name", ["r", "r8", "x", "x32", "s"])
def test_rows_hold_the_text_the_removed_spans_and_no_loss_on_inputs(tokenizer, name):
    ids = specials(DenoisingOptions(), tokenizer)
    x = windows(tokenizer)
    batch = corrupt_batch(x, [DENOISERS.get(name)] * 4, ids, np.random.default_rng(3))
    T = x.shape[1]
    for b in range(4):
        row, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        P = next(t for t in range(T) if labels[t] != IGNORE_INDEX)  # first target position
        end = max(t for t in range(T) if labels[t] != IGNORE_INDEX) + 1
        assert row[0] == ids.modes[DENOISERS.get(name).paradigm]  # the mode token leads
        assert labels[:P] == [IGNORE_INDEX] * P and labels[end:] == [IGNORE_INDEX] * (T - end)
        assert labels[P:end] == row[P:end]  # the targets are scored, as the model shifts them
        prefix, targets = row[1:P], row[P:end]
        if name == "s":  # prefix-LM: no sentinel, the target continues the prefix
            assert not set(row) & set(ids.sentinels)
            assert prefix + targets == x[b, : len(prefix) + len(targets)].tolist()
            continue
        used = [t for t in prefix if t in ids.sentinels]
        assert used == ids.sentinels[: len(used)]  # sentinels in order, one per span
        assert [t for t in targets if t in ids.sentinels] == used  # the same, lined up
        assert targets[0] == used[0]  # the target starts with the first span's sentinel
        original = undo(prefix, targets, ids.sentinels)
        assert original == x[b, : len(original)].tolist()  # spans put back = the text
        assert len(original) + 2 * len(used) + 1 == end  # the text, its sentinels, the mode
        noise = len(targets) - len(used)
        assert abs(noise / len(original) - DENOISERS.get(name).rate) < 0.05


def test_the_mask_is_bidirectional_on_the_prefix_and_causal_after():
    mask = prefix_lm_mask(torch.tensor([3, 5]), 7)[:, 0]  # (B, T, T)
    for b, P in enumerate((3, 5)):
        for q in range(7):
            for k in range(7):
                assert bool(mask[b, q, k]) == (k < P or k <= q), (b, q, k)


def test_in_the_model_prefix_positions_see_later_prefix_tokens_and_targets_do_not_see_ahead(
    tokenizer,
):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tokenizer.vocab_size)).eval()
    ids = specials(DenoisingOptions(), tokenizer)
    batch = corrupt_batch(
        windows(tokenizer, B=1), [DENOISERS.get("r")], ids, np.random.default_rng(0)
    )
    P = int((batch["labels"][0] == IGNORE_INDEX).long().argmin())
    with torch.no_grad():
        before = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        prefix_changed = batch["input_ids"].clone()
        prefix_changed[0, P - 2] = (prefix_changed[0, P - 2] + 1) % 256
        after = model(prefix_changed, attention_mask=batch["attention_mask"]).logits
        target_changed = batch["input_ids"].clone()
        target_changed[0, P + 2] = (target_changed[0, P + 2] + 1) % 256
        later = model(target_changed, attention_mask=batch["attention_mask"]).logits
    assert (after[0, 0] - before[0, 0]).abs().max() > 1e-4  # position 0 sees position P-2
    assert torch.equal(later[0, : P + 2], before[0, : P + 2])  # nothing sees a later target
    assert (later[0, P + 2] - before[0, P + 2]).abs().max() > 1e-4


def test_the_objective_is_the_models_loss_on_the_corrupted_rows(tokenizer):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tokenizer.vocab_size))
    cfg = TrainConfig(objective="span-corruption")
    objective = build_objective(cfg, model, tokenizer)
    x = windows(tokenizer)
    torch.manual_seed(5)
    loss = objective(model, {"input_ids": x, "labels": x.clone()})
    torch.manual_seed(5)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
    rng.choice(1, 4, p=[1.0])  # the denoiser draw (one denoiser: always it)
    ids = specials(DenoisingOptions(mixture=["r"], mode_tokens=False), tokenizer)
    batch = corrupt_batch(x, [DENOISERS.get("r")] * 4, ids, rng)
    assert torch.allclose(loss, model(**batch).loss, atol=1e-6)
    assert objective.validation is not objective  # validation reports the next-token loss


def test_a_tokenizer_without_sentinels_is_refused_and_options_are_checked():
    plain = Tokenizer.train([TEXT], vocab_size=300)
    model = CausalLM(preset("tiny", vocab_size=plain.vocab_size))
    with pytest.raises(ConfigError, match="lacks the denoising token"):
        build_objective(TrainConfig(objective="ul2"), model, plain)
    with pytest.raises(ConfigError, match="train.objective_options: mixture"):
        build_objective(TrainConfig(objective="ul2", objective_options={"mixture": ["q"]}), model)
    with pytest.raises(ConfigError, match="unknown"):
        build_objective(TrainConfig(objective="masked-lm"), model)
    assert SENTINEL.format(0) in denoising_tokens() and "<|mode_S|>" in denoising_tokens()
    size = plain.vocab_size
    ids = plain.add_special_tokens(["<|sentinel_0|>"])
    assert ids == [size] and plain.encode("人民") == Tokenizer.train([TEXT], 300).encode("人民")
