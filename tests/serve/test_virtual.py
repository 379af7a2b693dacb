"""Virtual-token adapters in the engine: prompt tuning, prefix-tuning and P-tuning v2 served as
a KV-cache prefix give each request the tokens generation through the method gives it alone,
mixed in one batch with the base and LoRA; their columns are shared by the prefix cache."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lmforge.errors import CheckpointError, ConfigError
from lmforge.serve import AdapterStore, Engine, EngineConfig
from lmforge.serve.virtual import is_virtual
from tests.serve.helpers import alone, greedy, request, saved_delta

METHODS = {  # adapter name → (method, config): one per way virtual tokens reach the cache
    "prompt": ("prompt", {"num_virtual_tokens": 5}),
    "prefix": ("prefix", {"num_virtual_tokens": 19, "projection": False}),
    "v2": ("ptuning2", {"num_virtual_tokens": 3}),
    "lora": ("lora", {"r": 2, "targets": ["q_proj", "v_proj"]}),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, base):
    root = tmp_path_factory.mktemp("virtual")
    tuned = {
        name: saved_delta(base, root / name, method, config, seed)
        for seed, (name, (method, config)) in enumerate(METHODS.items())
    }
    lm = copy.deepcopy(base)
    store = AdapterStore(lm, {name: str(root / name) for name in METHODS}, max_slots=1)
    return lm, store, tuned


def test_virtual_adapters_are_kv_prefixes_and_lora_keeps_its_slot(served):
    _, store, _ = served
    assert {n: p.length for n, p in store.prefixes.items()} == {"prompt": 5, "prefix": 19, "v2": 3}
    assert store.slots == 1 and store.acquire("prompt") == 0 and store.acquire("lora") == 1
    store.release("prompt")
    store.release("lora")


def test_each_request_gets_what_its_method_generates_alone_in_a_mixed_batch(served, tok, base):
    lm, store, tuned = served
    engine = Engine(lm, tok, EngineConfig(block_size=4, kv_cache_mb=1.0), store)
    g = torch.Generator().manual_seed(3)
    asks = [(name, torch.randint(3, 300, (n,), generator=g).tolist())
            for name, n in [("prompt", 6), ("", 9), ("prefix", 2), ("v2", 13), ("lora", 5),
                            ("prefix", 11)]]  # fmt: skip
    sinks = []
    for name, prompt in asks:
        r, sink = request(prompt, greedy(7), adapter=name)
        engine.submit(r)
        sinks.append(sink)
    engine.run_until_idle()
    for (name, prompt), sink in zip(asks, sinks):
        reference = tuned[name] if name else base
        assert sink.tokens == alone(reference, prompt, greedy(7)), name
    assert engine.blocks.available() == engine.blocks.num_blocks  # every block given back


def test_the_virtual_columns_are_read_from_the_prefix_cache_the_second_time(served, tok):
    lm, store, tuned = served
    engine = Engine(lm, tok, EngineConfig(block_size=4, kv_cache_mb=1.0), store)
    prompt = list(range(10, 20))
    outputs = []
    for _ in range(2):
        r, sink = request(prompt, greedy(4), adapter="prefix")
        engine.submit(r)
        engine.run_until_idle()
        outputs.append(sink)
    assert outputs[0].outputs[-1].cached_tokens == 0
    # 19 virtual + 10 prompt columns: 7 full blocks of 4 are cached, less the 19 virtual ones
    assert outputs[1].outputs[-1].cached_tokens == 7 * 4 - 19
    assert outputs[0].tokens == outputs[1].tokens == alone(tuned["prefix"], prompt, greedy(4))


def test_the_context_counts_the_virtual_columns(served, tok):
    lm, store, _ = served
    engine = Engine(lm, tok, EngineConfig(block_size=4, kv_cache_mb=1.0), store)
    r, _ = request(list(range(3, 103)), greedy(10), adapter="prefix")  # 100 + 10 + 19 > 128
    with pytest.raises(ConfigError, match="19 virtual tokens of its adapter"):
        engine.submit(r)


def test_virtual_tokens_inside_the_prompt_are_refused_with_the_way_to_serve_them(tmp_path, base):
    saved_delta(base, tmp_path / "infix", "prefix",
          {"num_virtual_tokens": 2, "embedding_only": True, "placement": "infix"}, 0)  # fmt: skip
    with pytest.raises(ConfigError, match="inside the prompt") as e:
        AdapterStore(copy.deepcopy(base), {"infix": str(tmp_path / "infix")})
    assert "lmforge chat --adapter" in str(e.value)


def test_the_method_of_a_peft_directory_is_read_from_its_config(tmp_path):
    for kind, virtual in [("PROMPT_TUNING", True), ("PREFIX_TUNING", True), ("LORA", False)]:
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "adapter_config.json").write_text(json.dumps({"peft_type": kind}))
        assert is_virtual(tmp_path / kind) is virtual
    with pytest.raises(CheckpointError, match="holds no adapter"):
        is_virtual(tmp_path)


def test_a_method_neither_lora_nor_virtual_is_refused_with_the_way_to_serve_it(tmp_path, base):
    saved_delta(base, tmp_path / "bitfit", "bitfit", {}, 0)
    with pytest.raises(ConfigError, match="a bitfit adapter") as e:
        AdapterStore(copy.deepcopy(base), {"b": str(tmp_path / "bitfit")})
    assert "lmforge export --format merged" in str(e.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        AdapterStore(copy.deepcopy(base), {"b": str(tmp_path / "nowhere")})
