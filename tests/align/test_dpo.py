"""DPO: the fused head log-probabilities, the loss variants by hand, and parity with trl's
DPOTrainer (loss and gradients within 1e-5) on a transformers Llama and on the native model
built from the same weights."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.align.dpo import DPOObjective, DPOSettings, dpo_loss
from lmforge.align.logprobs import Reference, head_logprobs, token_logprobs
from lmforge.errors import ConfigError
from tests.align.helpers import VOCAB, grads, hf_tokenizer, make, nudge

trl = pytest.importorskip("trl")


@pytest.mark.parametrize("trainable", [True, False])
def test_fused_head_logprobs_equal_log_softmax(trainable):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 16, generator=g, dtype=torch.float64, requires_grad=trainable)
    y = torch.randint(0, 40, (300,), generator=g)
    head = torch.nn.Linear(16, 40, bias=False).double()
    head.weight = torch.nn.Parameter(w.detach().clone(), requires_grad=trainable)
    upstream = torch.randn(300, generator=g, dtype=torch.float64)
    got = head_logprobs(head, h, y, temperature=0.7)
    (got.double() * upstream).sum().backward()
    gh, gw = h.grad.clone(), head.weight.grad
    h.grad = None
    want = torch.log_softmax((h @ w.t()) / 0.7, -1).gather(1, y[:, None]).squeeze(1)
    (want * upstream).sum().backward()
    assert torch.allclose(got.double(), want, atol=1e-6)  # the fused forward keeps fp32 sums
    assert torch.allclose(gh, h.grad, atol=1e-6)
    if trainable:
        assert torch.allclose(gw, w.grad, atol=1e-6)
    else:
        assert gw is None


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_token_logprobs_match_the_models_logits(backend):
    model = make(backend)
    ids = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # the prompt
    got = token_logprobs(model, ids, mask, labels)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    want = torch.zeros(2, 9)
    for b in range(2):
        for t in range(4, 9):
            if labels[b, t] != -100:
                want[b, t] = torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]]
    assert torch.allclose(got, want, atol=1e-5)
    assert (got[1, 7:] == 0).all() and (got[:, :4] == 0).all()


def test_losses_by_hand():
    policy = torch.tensor([-3.0, -5.0, -4.0, -4.5])  # chosen, chosen, rejected, rejected
    ref = torch.tensor([-3.5, -4.0, -4.2, -4.0])
    tokens = torch.tensor([2, 4, 3, 1])
    d = [(-3.0 + 3.5) - (-4.0 + 4.2), (-5.0 + 4.0) - (-4.5 + 4.0)]  # Δ per pair
    beta, eps = 0.5, 0.1

    def ls(x):
        return math.log(1 / (1 + math.exp(-x)))

    cases = {
        ("sigmoid", 0.0): [-ls(beta * x) for x in d],
        ("sigmoid", eps): [-(1 - eps) * ls(beta * x) - eps * ls(-beta * x) for x in d],
        ("hinge", 0.0): [max(0.0, 1 - beta * x) for x in d],
        ("robust", eps): [
            (-(1 - eps) * ls(beta * x) + eps * ls(-beta * x)) / (1 - 2 * eps) for x in d
        ],
        ("ipo", 0.0): [
            ((0.5 / 2 - 0.2 / 3) - 1 / (2 * beta)) ** 2,
            ((-1.0 / 4 - (-0.5) / 1) - 1 / (2 * beta)) ** 2,
        ],
    }
    for (loss, smoothing), want in cases.items():
        s = DPOSettings(beta=beta, loss=loss, label_smoothing=smoothing)
        got, ratios = dpo_loss(policy, ref, tokens, s)
        assert got.tolist() == pytest.approx(want, abs=1e-6), loss
        assert ratios.delta.tolist() == pytest.approx(d)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="dpo.loss 'kto' is unknown"):
        DPOSettings(loss="kto").validate()
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOSettings(label_smoothing=0.5).validate()


# ── parity with trl ─────────────────────────────────────────────────────────────────────


def trl_batch():
    """Two pairs as trl's collator lays them out: chosen rows first, right padding."""
    prompt = [[5, 6, 7], [8, 9]]
    chosen, rejected = [[10, 11, 12], [13]], [[14], [15, 16, 17, 18]]
    collate = trl.trainer.dpo_trainer.DataCollatorForPreference(pad_token_id=0)
    examples = [
        {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
        for p, c, r in zip(prompt, chosen, rejected)
    ]
    return collate(examples)


def trl_trainer(model, ref_model, tmp_path, **settings):
    from datasets import Dataset

    from tests.align.helpers import chat_tokenizer

    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        bf16=False,  # trl's default autocasts to bfloat16; the comparison is in fp32
        **settings,
    )
    data = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}] * 2)
    return trl.DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=data,
        processing_class=hf_tokenizer(chat_tokenizer()),
    )


@pytest.mark.parametrize(
    "loss, smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)]
)
@pytest.mark.parametrize("backend", ["hf", "native"])
def test_loss_and_gradients_equal_trl(loss, smoothing, backend, tmp_path):
    reference = make("hf")
    theirs = make("hf")
    nudge(theirs)
    trainer = trl_trainer(
        theirs, reference, tmp_path, beta=0.3, loss_type=[loss], label_smoothing=smoothing
    )
    batch = trl_batch()
    theirs.train()
    trl_loss = trainer.compute_loss(theirs, dict(batch))
    trl_loss.backward()

    ours = make(backend)
    ref = Reference(ours)  # π_ref: the starting weights
    nudge(ours)
    ours.train()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    mine = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    objective = DPOObjective(DPOSettings(beta=0.3, loss=loss, label_smoothing=smoothing), ref)
    our_loss = objective(ours, {**mine, "labels": labels})
    our_loss.backward()
    assert abs(float(our_loss) - float(trl_loss)) < 1e-5
    ours_g, trl_g = grads(ours), grads(theirs)
    assert set(ours_g) == set(trl_g)  # both kinds name their tensors as transformers' Llama
    for name, g in trl_g.items():
        assert torch.allclose(ours_g[name], g, atol=1e-5), name
    assert objective.step_metrics["accuracy"] in (0.0, 0.5, 1.0)


def test_lora_reference_is_the_base_with_the_delta_disabled():
    from lmforge import peft

    model = make("native")
    with torch.no_grad():
        base = model(torch.tensor([[1, 2, 3, 4]])).logits
    delta = peft.apply(model, "lora", {"r": 4}, seed=0)
    ref = Reference(delta.model)
    assert set(ref.saved) == set(delta.trainable_parameters())  # only the delta is copied
    nudge(delta.model)
    with torch.no_grad():
        moved = delta.model(torch.tensor([[1, 2, 3, 4]])).logits
        with ref.active():
            back = delta.model(torch.tensor([[1, 2, 3, 4]])).logits
    assert not torch.allclose(moved, base, atol=1e-4)
    assert torch.equal(back, base)
    after = delta.model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.equal(after, moved) and after.requires_grad


def test_precomputed_reference_equals_live(tmp_path):
    from lmforge.align.dpo import precompute_reference
    from lmforge.data.preferences import EncodedPair, pair_batch
    from lmforge.data.sft import EncodedExample

    def ex(ids, prompt):
        return EncodedExample(ids, [-100] * prompt + ids[prompt:])

    pairs = [
        EncodedPair(ex([1, 2, 3, 4], 2), ex([1, 2, 5], 2)),
        EncodedPair(ex([6, 7, 8], 1), ex([6, 9, 10, 11, 12], 1)),
    ]
    model = make("native")
    table = precompute_reference(model, pairs, pad_id=0, batch_size=1)  # (2, 2)
    batch = pair_batch(pairs, 0)
    live = DPOObjective(DPOSettings(), Reference(model))
    want = torch.cat([table[:, 0], table[:, 1]])
    assert torch.allclose(live.reference_logps(model, batch), want, atol=1e-6)
    assert table[0, 0] < 0 and table[1, 1] < table[1, 0]  # more tokens, lower log-probability
