"""The knowledge module (K-Adapter style) and parameter-level injection on a tiny model."""

import pytest
import torch

from lmforge import peft
from lmforge.errors import ConfigError
from lmforge.knowledge.inject import InjectionConfig, inject_knowledge
from lmforge.knowledge.module import KnowledgeNorm, Tap
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig, generate
from tests.models import make

from .helpers import DOCS


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_module_reads_the_chosen_layers_and_decodes_with_a_cache(backend):
    delta = peft.apply(make(backend, layers=4), "knowledge", {"width": 8})
    model = delta.model
    taps = [n for n, m in model.named_modules() if isinstance(m, Tap)]
    assert taps == ["model.layers.1", "model.layers.2", "model.layers.3"]  # 4//4, 4//2, 3·4//4, 3
    assert isinstance(model.model.norm, KnowledgeNorm)
    with torch.no_grad():
        for p in delta.trainable_parameters().values():
            p.add_(torch.randn_like(p) * 0.5)
    prompt = [[1, 5, 9, 14]]
    out = generate(model, prompt, SamplingConfig(max_new_tokens=5, temperature=0))[0].token_ids
    ids = list(prompt[0])
    with torch.no_grad():
        for _ in range(5):  # no cache: the whole sequence each step
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert out == ids[4:]
    with pytest.raises(ConfigError, match="already carries"):
        delta.apply(model)


def test_layers_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="names a layer the 2-layer model lacks"):
        peft.apply(make("native"), "knowledge", {"layers": [0, 5]})


def _doc_loss(model, tokenizer) -> float:
    ids = torch.tensor([tokenizer.encode(DOCS["faq.rst"])[:64]])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


@pytest.mark.parametrize("method", ["lora", "knowledge"])
def test_injection_trains_the_documents_in(method, tiny_lm, tmp_path):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tiny_lm.tokenizer.vocab_size)).eval()
    before = _doc_loss(model, tiny_lm.tokenizer)
    cfg = InjectionConfig(method=method, delta={"r": 4} if method == "lora" else {"width": 16},
                          steps=12, batch_size=2, seq_len=32, lr=1e-2)  # fmt: skip
    done = inject_knowledge(model, tiny_lm.tokenizer, list(DOCS.values()) * 3, cfg,
                            tmp_path / "run", progress=False)  # fmt: skip
    assert done.delta is not None and done.delta.name == method and done.result.step == 12
    assert _doc_loss(done.model, tiny_lm.tokenizer) < before
    assert not done.model.training
    fresh = CausalLM(preset("tiny", vocab_size=tiny_lm.tokenizer.vocab_size))
    with pytest.raises(ConfigError, match="fewer than one batch"):
        inject_knowledge(fresh, tiny_lm.tokenizer, ["tiny"], cfg, tmp_path / "r2")
