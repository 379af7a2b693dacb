import contextlib

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, KVCache, ModelConfig, loss_only, preset
from lmforge.model.attention import apply_rope
from lmforge.model.loss import LossPlan, linear_cross_entropy, loss_plan

V = 97


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=V)).eval()


def tokens(B=2, T=12, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_shapes_and_loss_is_shifted_cross_entropy(model):
    x = tokens()
    out = model(x, labels=x)
    assert out.logits.shape == (2, 12, V) and out.past_key_values is None
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual)
    labels = x.clone()
    labels[:, :6] = -100
    masked = F.cross_entropy(out.logits[:, 5:-1].reshape(-1, V), x[:, 6:].reshape(-1))
    assert torch.allclose(model(x, labels=labels).loss, masked)


@pytest.mark.parametrize("tied", [True, False])
def test_training_loss_fuses_the_head_without_changing_loss_or_gradients(tied):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=V, tie_embeddings=tied))
    x = tokens(B=3, T=11)
    labels = x.clone()
    labels[1, :4] = -100
    results = []
    for fused in (True, False):
        model.zero_grad()
        with loss_only(model) if fused else contextlib.nullcontext():
            out = model(x, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.logits, out.loss.detach(), grads))
    (fused_logits, fused_loss, fused_grads), (logits, loss, grads) = results
    assert fused_logits is None and logits.shape == (3, 11, V)
    assert model.fused_loss is False  # loss_only restores the model afterwards
    assert torch.allclose(fused_loss, loss, atol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-6), name


def test_fused_loss_in_small_chunks_equals_one_chunk():

    torch.manual_seed(0)
    h = torch.randn(2, 9, 16, requires_grad=True)
    w = torch.randn(V, 16, requires_grad=True)  # a trained head: row chunks
    labels = torch.randint(0, V, (2, 9))
    one = linear_cross_entropy(h, w, labels, LossPlan(h.dtype, chunk_rows=64))
    g_one = torch.autograd.grad(one, (h, w))
    small = linear_cross_entropy(h, w, labels, LossPlan(h.dtype, chunk_rows=5))
    g_small = torch.autograd.grad(small, (h, w))
    assert torch.allclose(one, small)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(g_one, g_small))
    reference = F.cross_entropy((h @ w.t())[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert torch.allclose(one, reference, atol=1e-6)


@pytest.mark.parametrize("budget", [1 << 21, 18 * 7, 18])  # one slice, slices of 7, of 1 word
def test_frozen_head_loss_over_vocabulary_slices_equals_the_reference(budget):

    torch.manual_seed(0)
    h = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, 16, dtype=torch.float64)  # frozen: vocabulary slices, online softmax
    labels = torch.randint(0, V, (2, 9))
    labels[1, :3] = -100
    loss = linear_cross_entropy(h, w, labels, LossPlan(h.dtype, budget=budget))
    (grad,) = torch.autograd.grad(2.5 * loss, h)
    z = (h @ w.t())[:, :-1].reshape(-1, V)
    reference = F.cross_entropy(z, labels[:, 1:].reshape(-1), ignore_index=-100)
    (expected,) = torch.autograd.grad(2.5 * reference, h)
    assert torch.allclose(loss, reference, atol=1e-12, rtol=0)
    assert torch.allclose(grad, expected, atol=1e-12, rtol=0)
    assert torch.all(grad[1, :2] == 0)  # rows whose next token is ignored
    h16 = h.detach().bfloat16().requires_grad_()  # 16-bit rows: softmax and sums in fp32
    half = linear_cross_entropy(h16, w.float(), labels, LossPlan(h16.dtype, budget=budget))
    (half_grad,) = torch.autograd.grad(2.5 * half, h16)
    assert abs(half.item() - reference.item()) < 2e-2 * reference.item()
    assert half_grad.dtype == torch.bfloat16
    assert (half_grad.double() - expected).abs().max() < 2e-2 * expected.abs().max()


def test_frozen_head_loss_is_exact_for_a_sure_model_and_a_16_bit_head():

    torch.manual_seed(0)
    w = torch.randn(V, 64).to(torch.bfloat16)  # stored in 16 bits, computed in fp32
    labels = torch.randint(0, V, (1, 9))
    h = (0.5 * w[labels[0].roll(-1)].float())[None].requires_grad_()  # p(target) ≈ 1 − 1e-7
    loss = linear_cross_entropy(h, w, labels, LossPlan(h.dtype, budget=9 * 5))
    (grad,) = torch.autograd.grad(loss, h)
    h64 = h.detach().double().requires_grad_()
    z = (h64 @ w.double().t())[:, :-1].reshape(-1, V)
    reference = F.cross_entropy(z, labels[:, 1:].reshape(-1))
    (expected,) = torch.autograd.grad(reference, h64)
    assert reference.item() < 1e-6  # the regime where 1 − p would cancel
    assert abs(loss.item() - reference.item()) <= 1e-4 * reference.item()
    assert (grad.double() - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_kv_cache_gives_the_same_logits_as_one_pass(model):
    x = tokens()
    full = model(x).logits
    first = model(x[:, :7], use_cache=True)
    assert first.past_key_values.length == 7
    rest = [
        model(x[:, t : t + 1], past_key_values=first.past_key_values, use_cache=True).logits
        for t in range(7, 12)
    ]
    assert torch.allclose(torch.cat([first.logits, *rest], 1), full, atol=1e-5)


def test_preallocated_cache_grows_when_outgrown(model):
    x = tokens()
    cache = KVCache.allocate(model.config, 2, capacity=4)
    out = model(x, past_key_values=cache, use_cache=True)
    assert cache.capacity >= 12 and cache.length == 12
    assert torch.allclose(out.logits, model(x).logits, atol=1e-5)


def test_naive_attention_matches_sdpa(model):
    naive = CausalLM(model.config.replace(attention="naive")).eval()
    naive.load_state_dict(model.state_dict())
    x = tokens()
    assert torch.allclose(naive(x).logits, model(x).logits, atol=1e-5)
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    assert torch.allclose(
        naive(x, attention_mask=mask).logits, model(x, attention_mask=mask).logits, atol=1e-5
    )


def test_left_padding_matches_the_unpadded_sequence(model):
    x = tokens()
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    padded = model(x, attention_mask=mask).logits
    alone = model(x[1:, 5:]).logits
    assert torch.allclose(padded[1, 5:], alone[0], atol=1e-5)
    assert torch.isfinite(padded).all()


def test_inputs_embeds_equal_input_ids(model):
    x = tokens()
    embeds = model.get_input_embeddings()(x)
    assert torch.equal(model(inputs_embeds=embeds).logits, model(x).logits)
    with pytest.raises(ValueError, match="exactly one"):
        model(x, inputs_embeds=embeds)


def test_tied_embeddings_share_storage_and_untied_do_not():
    tied = CausalLM(preset("tiny", vocab_size=V))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied = CausalLM(preset("tiny", vocab_size=V, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert untied.num_parameters() - tied.num_parameters() == V * 64


def test_parameter_count_and_flops():
    cfg = preset("tiny", vocab_size=V)
    m = CausalLM(cfg)
    d, ff, kv = 64, cfg.d_ff, 2 * 16
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ff + 2 * d
    assert cfg.d_ff == 192 and cfg.head_dim == 16
    assert m.num_parameters() == V * d + 2 * per_layer + d
    linear = 2 * (d * d * 2 + d * kv * 2 + 3 * d * ff) + V * d
    assert m.flops_per_token(10, training=False) == 2 * linear + 2 * 2 * 10 * 64
    assert m.flops_per_token(10) == 3 * m.flops_per_token(10, training=False)


def test_context_overflow_is_a_clear_error(model):
    x = torch.zeros(1, 129, dtype=torch.long)
    with pytest.raises(ValueError, match="max_seq_len=128"):
        model(x)


def test_rope_is_a_rotation_that_preserves_norms():
    x = torch.randn(1, 2, 5, 8)
    pos = torch.arange(5)[None]
    from lmforge.model.attention import RotaryEmbedding

    cos, sin = RotaryEmbedding(8, 10000.0)(pos, x.dtype)
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[:, :, 0], x[:, :, 0])  # position 0 is not rotated


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    m = CausalLM(preset("tiny", vocab_size=V, dropout=0.5))
    x = tokens()
    m.train()
    assert not torch.equal(m(x).logits, m(x).logits)
    m.eval()
    assert torch.equal(m(x).logits, m(x).logits)


@pytest.mark.parametrize(
    "fields, where",
    [
        ({"n_head": 4, "n_kv_head": 3}, "n_kv_head"),
        ({"dropout": 1.0}, "dropout"),
        ({"attention": "magic"}, "sdpa"),
        ({"d_model": 0}, "d_model"),
    ],
)
def test_bad_model_config_names_the_field(fields, where):
    from lmforge.config import from_dict

    with pytest.raises(ConfigError, match=where):
        from_dict(ModelConfig, fields)


def test_fused_loss_on_a_large_vocabulary_equals_the_reference():
    # Rows this long take log_softmax's blocked path, which the in-place use must survive.

    torch.manual_seed(0)
    h = torch.randn(2, 5, 8, requires_grad=True)
    w = (3 * torch.randn(50_000, 8)).requires_grad_()
    labels = torch.randint(0, 50_000, (2, 5))
    labels[0, :2] = -100
    loss = linear_cross_entropy(h, w, labels, LossPlan(h.dtype, chunk_rows=4))
    fused = torch.autograd.grad(loss, (h, w))
    z = (h @ w.t())[:, :-1].reshape(-1, 50_000)
    reference = F.cross_entropy(z, labels[:, 1:].reshape(-1), ignore_index=-100)
    expected = torch.autograd.grad(reference, (h, w))
    assert torch.allclose(loss, reference, atol=1e-5)
    for ours, theirs in zip(fused, expected):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_fused_loss_matches_cross_entropy_in_value_and_gradient():
    from lmforge.model.loss import causal_lm_loss

    torch.manual_seed(0)
    z = torch.randn(3, 7, 11, requires_grad=True)
    y = torch.randint(0, 11, (3, 7))
    y[0, :4] = -100
    loss = causal_lm_loss(z, y)
    loss.backward()
    ours = z.grad.clone()
    z.grad = None
    ref = F.cross_entropy(z[:, :-1].reshape(-1, 11), y[:, 1:].reshape(-1))
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(ours, z.grad, atol=1e-7)
    with torch.no_grad():
        assert torch.allclose(causal_lm_loss(z, y), ref, atol=1e-6)


def test_logits_to_keep_returns_only_the_asked_positions(model):
    x = tokens()
    kept = model(x, logits_to_keep=1).logits
    assert kept.shape == (2, 1, V) and torch.allclose(kept, model(x).logits[:, -1:], atol=1e-5)
    chosen = model(x, logits_to_keep=torch.tensor([3, 0, 3])).logits  # positions, as given
    assert torch.allclose(chosen, model(x).logits[:, [3, 0, 3]], atol=1e-5)


def test_silu_mul_gradients_match_autograd_of_the_plain_expression():
    from lmforge.model.mlp import silu_mul

    g = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(silu_mul, (g, u))
    (F.silu(g) * u).sum().backward()
    expected = g.grad.clone(), u.grad.clone()
    g.grad = u.grad = None
    silu_mul(g, u).sum().backward()
    assert torch.allclose(g.grad, expected[0]) and torch.allclose(u.grad, expected[1])


def test_split_linear_blocks_follow_the_weight_and_carry_gradients():
    from lmforge.model.attention import SplitLinear, split_linear

    torch.manual_seed(0)
    layer = SplitLinear(8, 6, bias=False)
    x = torch.randn(1, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two blocks, whatever the machine
    try:
        _check_blocks(layer, x, split_linear)
    finally:
        torch.set_num_threads(threads)
    layer(x).sum().backward()  # few rows with grad on: the weight still gets its gradient
    assert torch.allclose(layer.weight.grad, x.expand(6, 8))


def _check_blocks(layer, x, split_linear):
    assert layer.blocks().shape[0] == 2
    with torch.no_grad():
        fresh = lambda: split_linear(x, layer.weight, None, layer.splits())  # noqa: E731
        assert torch.equal(layer(x), fresh())
        layer.weight.mul_(2)  # in place: the cut view sees it
        assert torch.equal(layer(x), fresh())
        layer.weight = torch.nn.Parameter(torch.randn(6, 8))  # replaced: cut again
        assert torch.equal(layer(x), fresh())
        assert torch.allclose(layer(x), F.linear(x, layer.weight), atol=1e-6)


def test_the_loss_plan_follows_the_device_and_autocast():
    h = torch.zeros(2, 3)
    assert loss_plan(h) == LossPlan(torch.float32, 256, 1 << 20)  # CPU: fp32 products
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss_plan(h).compute_dtype == torch.bfloat16  # what CUDA's autocast asks


@pytest.mark.parametrize("trained_head", [True, False], ids=["trained-head", "frozen-head"])
def test_bf16_autocast_loss_and_gradients_match_fp64_within_bf16_error(trained_head):
    """The path CUDA's bf16 autocast takes (products in bf16, softmax and sums in fp32), run
    here under CPU autocast: loss and gradients against a float64 reference."""
    torch.manual_seed(0)
    N, d, V = 48, 32, 200
    h = torch.randn(1, N, d, requires_grad=True)
    w = (torch.randn(V, d) * 0.3).requires_grad_(trained_head)
    labels = torch.randint(0, V, (1, N))
    labels[0, 5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(
            h, w, labels, LossPlan(torch.bfloat16, chunk_rows=16, budget=48 * 64)
        )
    loss.backward()
    h64, w64 = (
        h.detach().double().requires_grad_(),
        w.detach().double().requires_grad_(trained_head),
    )
    reference = F.cross_entropy((h64[0, :-1] @ w64.t()), labels[0, 1:], ignore_index=-100)
    reference.backward()
    fp32 = linear_cross_entropy(h.detach(), w.detach(), labels, LossPlan(torch.float32))
    assert loss.dtype == torch.float32 and loss.item() != fp32.item()  # bf16 products ran
    assert abs(fp32.item() - reference.item()) < 1e-5 * reference.item()
    assert abs(loss.item() - reference.item()) < 2e-2 * reference.item()
    rel = (h.grad.double() - h64.grad).norm() / h64.grad.norm()
    assert rel < 2e-2
    if trained_head:
        assert ((w.grad.double() - w64.grad).norm() / w64.grad.norm()) < 2e-2
