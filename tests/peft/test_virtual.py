"""Prompt tuning, prefix-tuning, P-tuning v1/v2 on native and transformers models: the delta
contract, where the virtual tokens go, generation through the wrapper, peft interop."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import lmforge.model.generate as generation
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.model import host
from lmforge.model.generate import SamplingConfig
from lmforge.model.hf import from_hf
from lmforge.peft import (
    build,
    count_parameters,
    load_delta,
    ptuning_v2,  # noqa: F401  (registers "ptuning2")
)
from lmforge.peft.prompt_tuning import frequent_token_ids
from lmforge.peft.ptuning import parse_template
from lmforge.peft.virtual import VirtualTokenModel

VOCAB, T = 61, 8
BACKENDS = ["native", "hf"]
# (method, config) cases that every contract test runs on both backends.
CASES = [
    ("prompt", {"num_virtual_tokens": 4}),
    ("prefix", {"num_virtual_tokens": 4, "hidden": 16}),
    (
        "prefix",
        {"num_virtual_tokens": 3, "hidden": 16, "embedding_only": True, "placement": "infix"},
    ),
    ("ptuning", {"num_virtual_tokens": 5, "hidden": 16, "template": "[P][P][P] {input} [P][P]"}),
    ("ptuning2", {"num_virtual_tokens": 4, "init_std": 0.5}),
]
IDS = ["prompt", "prefix", "prefix-embedding-infix", "ptuning-template", "ptuning2"]
# Trainable parameters of each case on the tiny model (d=64, 2 layers, 2 KV heads of 16).
COUNTS = {
    "prompt": 4 * 64,
    # E (4×64) + Linear(64, 16) + Linear(16, 2 layers · 2 · 2 heads · 16 = 128)
    "prefix": 4 * 64 + (64 * 16 + 16) + (16 * 128 + 128),
    "prefix-embedding-infix": 3 * 64 + (64 * 16 + 16) + (16 * 64 + 64),
    # E (5×64) + BiLSTM(64 → 16, 2 layers) + Linear(32, 32) + Linear(32, 64)
    "ptuning-template": 5 * 64
    + 2 * (4 * 16 * (64 + 16) + 8 * 16)
    + 2 * (4 * 16 * (32 + 16) + 8 * 16)
    + (32 * 32 + 32)
    + (32 * 64 + 64),
    "ptuning2": 4 * 128,
}


def make(backend: str, layers: int = 2, context: int = 64) -> nn.Module:
    """A tiny Llama with fixed weights; "native" is its lmforge import (the same function)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        initializer_range=0.1,  # peaked enough that greedy decoding does not just repeat
    )
    model = LlamaForCausalLM(config).eval()
    return from_hf(model).eval() if backend == "native" else model


def ids(batch: int = 2, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def applied(backend: str, method: str, config: dict, seed: int = 3):
    torch.manual_seed(seed)
    delta = build(method, config)
    return delta, delta.apply(make(backend))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ─────────────────────────────────────────────────────────────────────── the contract


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "config"), CASES, ids=IDS)
def test_only_the_method_parameters_train(backend: str, method: str, config: dict) -> None:
    delta, model = applied(backend, method, config)
    assert isinstance(model, VirtualTokenModel) and delta.family == "addition"
    assert not delta.identity_at_init
    case = IDS[CASES.index((method, config))]
    assert count_parameters(model)[0] == delta.parameter_count() == COUNTS[case]
    out = model(ids(), labels=ids())
    assert out.logits.shape == (2, T, VOCAB)  # the original positions only
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert name.startswith("prompt_encoder.") and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "config"), CASES, ids=IDS)
def test_save_then_load_delta_round_trips(
    backend: str, method: str, config: dict, tmp_path
) -> None:
    delta, model = applied(backend, method, config)
    with torch.no_grad():  # the path save() computes folded rows on (an LSTM rounds per path)
        before = model(ids()).logits
    delta.save(tmp_path)
    # Reparameterised methods save their folded rows but keep training with the encoder.
    assert (model.prompt_encoder.transform is not None) == bool(delta.FOLDED)
    loaded = load_delta(tmp_path, make(backend))
    assert type(loaded) is type(delta)
    assert loaded.config == dataclasses.replace(delta.config, **delta.FOLDED)
    saved = delta.folded_state()
    assert sorted(loaded.state_dict()) == sorted(saved)
    assert all(torch.equal(t, saved[n]) for n, t in loaded.state_dict().items())
    with torch.no_grad():
        assert torch.equal(loaded.model(ids()).logits, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "config"), CASES, ids=IDS)
def test_a_few_adamw_steps_lower_the_loss(backend: str, method: str, config: dict) -> None:
    delta, model = applied(backend, method, config)
    model.train()
    opt = torch.optim.AdamW(delta.trainable_parameters().values(), lr=3e-2)
    x = ids(4)
    labels = x.clone()
    labels[:, :3] = -100  # a prompt and a target, so the infix has a place to go
    losses = []
    for _ in range(8):
        loss = model(x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "config"), CASES, ids=IDS)
def test_left_padding_with_positions_changes_nothing(
    backend: str, method: str, config: dict
) -> None:
    _, model = applied(backend, method, config)
    x = ids()
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = model(x, attention_mask=mask, position_ids=positions).logits
    assert max_diff(padded[0, 3:], model(x[:1, 3:]).logits[0]) <= 1e-5
    assert max_diff(padded[1], model(x[1:]).logits[0]) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "config"), CASES, ids=IDS)
def test_output_differs_from_the_base(backend: str, method: str, config: dict) -> None:
    _, model = applied(backend, method, config)
    assert max_diff(model(ids()).logits, make(backend)(ids()).logits) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["prefix", "ptuning"])
def test_fold_gives_the_same_outputs(backend: str, method: str) -> None:
    config = CASES[1][1] if method == "prefix" else CASES[3][1]
    delta, model = applied(backend, method, config)
    with torch.no_grad():
        before = model(ids()).logits
    delta.fold()
    assert model.prompt_encoder.transform is None
    assert delta.parameter_count() == config["num_virtual_tokens"] * (
        128 if method == "prefix" else 64
    )
    assert (
        delta.config.projection is False if method == "prefix" else delta.config.encoder == "none"
    )
    with torch.no_grad():
        assert torch.equal(model(ids()).logits, before)


# ─────────────────────────────────────────────────────────────────────── generation


def wrapper_host_for(model: nn.Module) -> host.ModelHost:
    """The host_for change asked of host.py: drive a wrapper like the model it wraps."""
    inner = getattr(model, "base_model", None)
    base = inner if isinstance(inner, nn.Module) else model
    for candidate in host.HOSTS:
        if candidate.accepts(base):
            return candidate(model)
    return host.host_for(model)


@pytest.fixture
def generate(monkeypatch):
    """lmforge's generate(); with the host_for change applied while host.py lacks it."""
    probe = build("prompt", {"num_virtual_tokens": 1}).apply(make("native", layers=1))
    try:
        host.host_for(probe)
    except ConfigError:
        monkeypatch.setattr(generation, "host_for", wrapper_host_for)
    return generation.generate


def greedy_without_cache(model: nn.Module, prompt: list[int], n: int) -> list[int]:
    """Recompute the whole sequence for every token; the labels mark what was generated,
    so that virtual tokens placed between input and output stay after the prompt."""
    seq = list(prompt)
    for _ in range(n):
        labels = [-100] * len(prompt) + seq[len(prompt) :]
        with torch.no_grad():
            logits = model(torch.tensor([seq]), labels=torch.tensor([labels])).logits
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "config"), CASES, ids=IDS)
def test_greedy_generation_equals_recomputation(
    backend: str, method: str, config: dict, generate
) -> None:
    _, model = applied(backend, method, config)
    prompts = [[5, 9, 3, 7, 1, 30], [11, 2, 40]]  # different lengths: left padding
    results = generate(model, prompts, SamplingConfig(max_new_tokens=6, temperature=0))
    expected = [greedy_without_cache(model, p, 6) for p in prompts]
    assert [r.token_ids for r in results] == expected
    assert any(len(set(e)) > 1 for e in expected)  # not a model that repeats one token


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_wrapper_leaves_context_for_its_virtual_tokens(backend: str) -> None:
    _, model = applied(backend, "prefix", {"num_virtual_tokens": 10, "hidden": 8})
    assert wrapper_host_for(model).max_length() == 64 - 10
    assert host.host_for(model.base_model).max_length() == 64  # the base's config is untouched


# ─────────────────────────────────────────────────────────────── where the tokens go


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_tuning_prepends_and_strips(backend: str) -> None:
    _, model = applied(backend, "prompt", {"num_virtual_tokens": 4})
    x = ids()
    soft = model.prompt_encoder.embedding.weight[None].expand(2, -1, -1)
    embeds = torch.cat([soft, model.get_input_embeddings()(x)], 1)  # (2, 4 + T, d)
    expected = model.base_model(inputs_embeds=embeds).logits[:, 4:]
    assert torch.equal(model(x).logits, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ptuning_template_places_tokens_around_the_input(backend: str) -> None:
    template = "[P][P] {input} [P] {output}"
    config = {"num_virtual_tokens": 3, "hidden": 8, "template": template}
    _, model = applied(backend, "ptuning", config)
    x = ids(1)
    labels = x.clone()
    labels[:, :5] = -100  # input x[:5], output x[5:]
    h = model.prompt_encoder()  # (3, d)
    e = model.get_input_embeddings()(x)[0]
    stream = torch.cat([h[:2], e[:5], h[2:], e[5:]])[None]  # [P][P] input [P] output
    full = model.base_model(inputs_embeds=stream).logits[0]  # (3 + T, V)
    got = model(x, labels=labels).logits[0]
    # input token t sits at column 2+t; the last input token's logits are the [P]'s after it.
    assert torch.equal(got[:4], full[2:6]) and torch.equal(got[4], full[7])
    assert torch.equal(got[5:], full[8:])
    assert parse_template("[P] {input}[P] [P]{output}") == (1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ptuning_placeholders_equal_inserted_tokens(backend: str) -> None:
    inserted, model = applied(backend, "ptuning", {"num_virtual_tokens": 3, "hidden": 8})
    marked, with_marks = applied(backend, "ptuning", {"num_virtual_tokens": 3, "hidden": 8,
                                                      "placeholder_token_id": 0})  # fmt: skip
    marked.load_state_dict(inserted.state_dict())
    x = ids()
    out = with_marks(torch.cat([torch.zeros(2, 3, dtype=torch.long), x], 1)).logits
    assert out.shape == (2, 3 + T, VOCAB)  # nothing inserted: every column is the caller's
    assert max_diff(out[:, 3:], model(x).logits) <= 1e-6
    with pytest.raises(DataError, match="row 0 holds 0 placeholder tokens"):
        with_marks(x)


# ─────────────────────────────────────────────────────────────── prompt-tuning init


class WordTokenizer:
    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]


def test_frequent_token_ids_ranks_by_count_then_id() -> None:
    tok = WordTokenizer()
    texts = ["a b c c", "d c b", "e"]  # a0 b1 c2 d3 e4: c×3, b×2, then a, d, e once
    assert frequent_token_ids(tok, texts, k=3) == [2, 1, 0]
    assert frequent_token_ids(tok, texts) == [2, 1, 0, 3, 4]


def prompt_rows(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    _, model = applied("native", "prompt", config)
    return model.prompt_encoder.embedding.weight.detach(), model.get_input_embeddings().weight


def test_prompt_tuning_initialisations() -> None:
    rows, _ = prompt_rows({"num_virtual_tokens": 50, "init": "random", "seed": 4})
    assert rows.abs().max() <= 0.5 and rows.abs().max() > 0.45 and rows.shape == (50, 64)
    assert torch.equal(rows, prompt_rows({"num_virtual_tokens": 50, "seed": 4})[0])
    pool = [7, 8, 9, 10, 11]
    rows, table = prompt_rows({"num_virtual_tokens": 3, "init": "vocab", "init_token_ids": pool})
    picked = [next(i for i in pool if torch.equal(table[i], r)) for r in rows]
    assert len(set(picked)) == 3  # distinct tokens of the pool
    config = {"num_virtual_tokens": 5, "init": "labels", "init_label_ids": [[3, 4], [9]]}
    rows, table = prompt_rows(config)
    pos, neg = (table[3] + table[4]) / 2, table[9]
    assert torch.allclose(rows, torch.stack([pos, neg, pos, neg, pos]))
    rows, table = prompt_rows({"num_virtual_tokens": 5, "init": "text", "init_token_ids": [1, 2]})
    assert torch.equal(rows, table[[1, 2, 1, 2, 1]])
    rows, table = prompt_rows(
        {"num_virtual_tokens": 2, "init": "text", "init_token_ids": [5, 6, 7]}
    )
    assert torch.equal(rows, table[[5, 6]])


# ─────────────────────────────────────────────────────────────── P-tuning v2 head


@pytest.mark.parametrize("backend", BACKENDS)
def test_ptuning2_classification_head(backend: str, tmp_path) -> None:
    config = {"num_virtual_tokens": 4, "task": "classification", "num_classes": 3}
    delta, model = applied(backend, "ptuning2", config)
    assert sorted(delta.trainable_parameters()) == [
        "head.classifier.bias",
        "head.classifier.weight",
        "prompt_encoder.embedding.weight",
    ]
    x = ids(4)
    classes = torch.tensor([0, 1, 2, 1])
    logits = model.classify(x)
    assert logits.shape == (4, 3)
    out = model(x, labels=classes)
    assert torch.equal(out.logits, logits)
    assert torch.allclose(out.loss, F.cross_entropy(logits, classes))
    # The pooled state is the last real token's: right padding changes nothing.
    padded = torch.cat([x[:, :5], torch.zeros(4, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 3] * 4)
    assert max_diff(model.classify(padded, mask), model.classify(x[:, :5])) <= 1e-5
    opt = torch.optim.AdamW(delta.trainable_parameters().values(), lr=3e-2)
    losses = []
    for _ in range(6):
        loss = model(x, labels=classes).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert model(x).logits.shape == (4, T, VOCAB)  # still a language model
    delta.save(tmp_path)
    loaded = load_delta(tmp_path, make(backend))
    assert torch.equal(loaded.model.classify(x), model.classify(x))


# ─────────────────────────────────────────────────────────────────────── errors


def test_configs_are_checked() -> None:
    bad = [
        ("prompt", {"num_virtual_tokens": 0}),
        ("prompt", {"init": "glove"}),
        ("prompt", {"init": "labels"}),
        ("prompt", {"init": "text"}),
        ("prefix", {"placement": "suffix"}),
        ("prefix", {"placement": "infix"}),  # a layer-level infix
        ("ptuning", {"num_virtual_tokens": 4, "template": "[P] {input} [P]"}),
        ("ptuning", {"num_virtual_tokens": 2, "template": "[P] Question: {input} [P]"}),
        ("ptuning", {"num_virtual_tokens": 2, "template": "[P] {input} {output} [P]"}),
        ("ptuning", {"encoder": "gru"}),
        (
            "ptuning",
            {"num_virtual_tokens": 2, "template": "[P]{input}[P]", "placeholder_token_id": 0},
        ),
        ("ptuning2", {"task": "classification"}),
        ("ptuning2", {"task": "tagging"}),
    ]
    for method, config in bad:
        with pytest.raises(ConfigError):
            build(method, config)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_name_the_problem(backend: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match="as long as the model's context of 64"):
        build("prefix", {"num_virtual_tokens": 64}).apply(make(backend))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        build("prompt", {"init": "text", "init_token_ids": [VOCAB]}).apply(make(backend))
    with pytest.raises(ConfigError, match="placeholder_token_id=61 is outside the vocabulary"):
        build("ptuning", {"placeholder_token_id": VOCAB}).apply(make(backend))
    delta, model = applied(backend, "prompt", {"num_virtual_tokens": 4})
    with pytest.raises(ConfigError, match="already reads virtual tokens"):
        build("prompt").apply(model)
    with pytest.raises(ConfigError, match="no classification head"):
        model(ids(), labels=torch.tensor([0, 1]))
    delta.save(tmp_path)
    with pytest.raises(CheckpointError, match="another shape"):
        load_delta(tmp_path, narrower(backend))
    prefix, _ = applied(backend, "prefix", CASES[1][1])
    prefix.save(tmp_path / "prefix")
    with pytest.raises(CheckpointError, match="another shape"):
        load_delta(tmp_path / "prefix", make(backend, layers=1))


def narrower(backend: str) -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    return from_hf(model) if backend == "native" else model
