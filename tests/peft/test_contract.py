"""The delta-method contract, one table of cases run through every registered method on a
native tiny model and on a tiny transformers Llama (DESIGN.md, "The delta-tuning contract")."""

import copy

import pytest
import torch

from lmforge import knowledge, peft  # noqa: F401  (knowledge registers its module)
from lmforge.errors import CheckpointError
from lmforge.model import CausalLM, preset

transformers = pytest.importorskip("transformers")

V = 61
CASES = {  # method → config; every registered method must appear here
    "lora": {"r": 4},
    "adapter": {"bottleneck": 8},
    "bitfit": {},
    "named": {"patterns": ["norm"]},
    "prompt": {"num_virtual_tokens": 4},
    "prefix": {"num_virtual_tokens": 4},
    "ptuning": {"num_virtual_tokens": 4},
    "ptuning2": {"num_virtual_tokens": 4},
    "qlora": {"r": 4},
    "knowledge": {"width": 16},
}


def native():
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=V)).eval()


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(config).eval()


BACKENDS = {"native": native, "transformers": llama}
METHODS = list(CASES)


def batch():
    ids = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def nudge(delta):
    """Move the method's parameters off their initial values so checks are not trivial."""
    with torch.no_grad():
        for p in delta.trainable_parameters().values():
            p.add_(torch.randn_like(p) * 0.05)


def test_every_registered_method_is_in_the_table():
    assert sorted(peft.METHODS.names()) == sorted(METHODS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
class TestContract:
    def test_only_the_methods_parameters_train(self, method, backend):
        delta = peft.apply(BACKENDS[backend](), method, CASES[method])
        nudge(delta)
        model = delta.model
        model.train()
        model(**batch()).loss.backward()
        own = {id(p) for p in delta.trainable_parameters().values()}
        assert own, "the method trains nothing"
        for name, p in model.named_parameters():
            assert p.requires_grad == (id(p) in own), name
            assert (p.grad is not None) == (id(p) in own), name
        assert any(p.grad.abs().sum() > 0 for p in delta.trainable_parameters().values())

    def test_output_unchanged_at_init_where_promised(self, method, backend):
        base = BACKENDS[backend]()
        b = batch()
        before = base(**b).logits
        delta = peft.apply(base, method, CASES[method])
        if not delta.identity_at_init:
            pytest.skip(f"{method} does not promise identity at initialisation")
        assert torch.allclose(delta.model(**b).logits, before, atol=1e-6)

    def test_merged_equals_unmerged(self, method, backend):
        delta = peft.apply(BACKENDS[backend](), method, CASES[method])
        if not delta.mergeable:
            pytest.skip(f"{method} is not mergeable")
        nudge(delta)
        b = batch()
        unmerged = delta.model(**b).logits
        delta.merge()
        assert torch.allclose(delta.model(**b).logits, unmerged, atol=1e-5)
        delta.unmerge()
        assert torch.allclose(delta.model(**b).logits, unmerged, atol=1e-5)

    def test_save_load_round_trips_exactly(self, method, backend, tmp_path):
        delta = peft.apply(BACKENDS[backend](), method, CASES[method])
        nudge(delta)
        if hasattr(delta, "fold"):  # reparameterised prompts are saved folded (their output)
            delta.fold()
        b = batch()
        expected = delta.model(**b).logits
        delta.save(tmp_path / "delta")
        loaded = peft.load_delta(tmp_path / "delta", BACKENDS[backend]())
        assert torch.equal(loaded.model(**b).logits, expected)

    def test_a_few_steps_lower_the_loss(self, method, backend):
        delta = peft.apply(BACKENDS[backend](), method, CASES[method])
        model = delta.model
        model.train()
        opt = torch.optim.AdamW(delta.trainable_parameters().values(), lr=1e-2)
        b = batch()
        losses = []
        for _ in range(8):
            loss = model(**b).loss
            losses.append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad()
        assert losses[-1] < losses[0]

    def test_the_same_seed_gives_the_same_delta_bit_for_bit(self, method, backend):
        def initial_state(noise: int) -> dict:
            torch.manual_seed(noise)  # the global generator is left wherever it happens to be
            delta = peft.apply(BACKENDS[backend](), method, CASES[method], seed=7)
            return {n: t.clone() for n, t in delta.state_dict().items()}

        first, second = initial_state(1), initial_state(2)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[n], second[n]) for n in first)

    def test_a_delta_is_refused_on_another_base_unless_forced(self, method, backend, tmp_path):
        delta = peft.apply(BACKENDS[backend](), method, CASES[method])
        delta.save(tmp_path / "delta")
        other = BACKENDS[backend]()
        with torch.no_grad():
            other.get_input_embeddings().weight.add_(0.01)  # same shape, other weights
        with pytest.raises(CheckpointError, match="other weights.*force=True"):
            peft.load_delta(tmp_path / "delta", other)
        peft.load_delta(tmp_path / "delta", other, force=True)


def test_delta_state_holds_only_the_method_weights():
    base = native()
    delta = peft.apply(copy.deepcopy(base), "lora", {"r": 4})
    names = set(delta.state_dict())
    assert names and all("lora_" in n for n in names)
