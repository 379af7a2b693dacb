"""8-bit and paged AdamW: parity with torch.optim.AdamW, state, page files.

Tolerances (8-bit against fp32 AdamW, a 2-layer MLP regression, 200 seeded steps, lr 3e-3):
every step's loss within 10% of fp32 AdamW's, the final full-batch loss within 5%, each
parameter tensor within 10% (relative L2); against bitsandbytes' AdamW8bit (the reference
implementation, run on CPU), losses within 2% and 1%. Everything else is exact: fp32-state
tensors and PagedAdamW are compared with torch.equal, state sizes and page counters with ==.
"""

import gc
import inspect
import os
import re

import pytest
import torch
from torch import nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.quant.blockwise import dynamic_tree_map, quantize_blockwise
from lmforge.train.checkpoint import load_checkpoint, save_checkpoint
from lmforge.train.optim import (
    OPTIMIZERS,
    AdamW8bit,
    PagedAdamW,
    adamw8bit,
    build_optimizer,
    state_bytes,
)
from lmforge.train.optim.adamw import Hyper, adamw_update_
from lmforge.train.optim.page_store import Layout, Segment

PAGE = 4096  # bytes: 1024 fp32, the smallest page the OS page size allows


def mlp(seed: int = 1, bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 128, bias=bias), nn.GELU(), nn.Linear(128, 32, bias=bias))


def regression(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 32))
    x = torch.randn(n, 32)
    return x, teacher(x).detach() + 0.01 * torch.randn(n, 32)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 3) -> list[float]:
    x, y = regression()
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def full_loss(model: nn.Module) -> float:
    x, y = regression()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def same_params(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------- 8-bit AdamW


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[nn.Module, torch.optim.Optimizer, list[float]]]:
    """The MLP after 200 steps of fp32 AdamW and of AdamW8bit (same data, same init)."""
    runs = {}
    for name, cls in (("fp32", torch.optim.AdamW), ("8bit", AdamW8bit)):
        model = mlp()
        opt = cls(model.parameters(), lr=3e-3)
        runs[name] = (model, opt, train(model, opt, 200))
    return runs


def test_adamw8bit_follows_fp32_adamw_within_tolerance(trained):
    ref, _, ref_losses = trained["fp32"]
    model, opt, losses = trained["8bit"]
    assert "exp_avg_code" in opt.state[model[0].weight]  # 4096 elements: quantized
    assert "exp_avg" in opt.state[model[0].bias]  # small: fp32
    assert losses[-1] < ref_losses[0] / 20  # it learned
    # Measured: 2.3% worst step, 1.6% final loss, 2.6% worst parameter tensor.
    assert max(abs(a - b) / b for a, b in zip(losses, ref_losses)) < 0.10
    assert full_loss(model) == pytest.approx(full_loss(ref), rel=0.05)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert (p - q).norm() / q.norm() < 0.10


def test_adamw8bit_tracks_bitsandbytes_adamw8bit(trained):
    bnb = pytest.importorskip("bitsandbytes")
    model, _, losses = trained["8bit"]
    reference = mlp()
    bnb_losses = train(reference, bnb.optim.AdamW8bit(reference.parameters(), lr=3e-3), 200)
    # Different maps (ours decodes the paper's bit layout), same scheme. Measured: 0.4%, 0.1%.
    assert max(abs(a - b) / b for a, b in zip(losses, bnb_losses)) < 0.02
    assert full_loss(model) == pytest.approx(full_loss(reference), rel=0.01)


def test_adamw8bit_small_tensors_update_exactly_like_adamw():
    ref, model = nn.Linear(16, 8), nn.Linear(16, 8)
    model.load_state_dict(ref.state_dict())
    kw = {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}
    torch.manual_seed(0)
    ref_opt, opt = torch.optim.AdamW(ref.parameters(), **kw), AdamW8bit(model.parameters(), **kw)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ref.parameters()]
        for m, o in ((ref, ref_opt), (model, opt)):
            for p, g in zip(m.parameters(), grads):
                p.grad = g.clone()
            o.step()
    assert same_params(ref, model)


def test_adamw8bit_stores_its_moments_with_the_blockwise_codec():
    """m on the signed tree map, v on the unsigned one (never code 0 when positive), nearest
    rounding; θ moves with the fp32 moments (the codec's exact codes: tests/quant)."""
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(5000))
    param.grad = torch.randn(5000)
    ref, m, v = param.detach().clone(), torch.zeros(5000), torch.zeros(5000)
    opt = AdamW8bit([param], lr=1e-2)
    opt.step()
    adamw_update_(ref, param.grad, m, v, 1.0, Hyper(1e-2, 0.9, 0.999, 1e-8, 1e-2))
    assert torch.equal(param.detach(), ref)
    for key, moment, signed in (("exp_avg", m, True), ("exp_avg_sq", v, False)):
        qmap = dynamic_tree_map(signed)
        codes, absmax = quantize_blockwise(moment, qmap, 256, round_up_tiny=not signed)
        assert torch.equal(opt.state[param][f"{key}_code"], codes)
        assert torch.equal(opt.state[param][f"{key}_absmax"], absmax)


def test_adamw8bit_in_chunks_equals_one_piece(monkeypatch):
    """The update runs CHUNK elements at a time; chunk edges change no bit (odd sizes, a
    partial last block, a non-contiguous parameter)."""

    def train(chunk: int) -> tuple[list[torch.Tensor], list[dict]]:
        monkeypatch.setattr(adamw8bit, "CHUNK", chunk)
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(5000)), nn.Parameter(torch.randn(90, 70).t())]
        opt = AdamW8bit(params, lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape)
            opt.step()
        return [p.detach().clone() for p in params], [dict(opt.state[p]) for p in params]

    one_params, one_states = train(1 << 20)
    params, states = train(512)
    assert all(torch.equal(a, b) for a, b in zip(params, one_params))
    for a, b in zip(states, one_states):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_state_bytes_are_a_quarter_of_fp32_adamw():
    n = 128 * 128  # 64 blocks of 256
    x = torch.randn(4, 128)
    sizes = {}
    for name in ("adamw", "adamw8bit"):
        model = nn.Linear(128, 128, bias=False)
        opt = build_optimizer(name, model.parameters())
        model(x).sum().backward()
        opt.step()
        sizes[name] = state_bytes(opt)
    assert sizes["adamw"] == 2 * 4 * n + 4  # exp_avg + exp_avg_sq fp32, step
    assert sizes["adamw8bit"] == 2 * n + 2 * 4 * (n // 256) + 4  # codes + absmax, step
    assert sizes["adamw8bit"] / sizes["adamw"] == pytest.approx(0.25 + 1 / 256, abs=1e-4)


def test_adamw8bit_state_checks_its_block_size():
    model = nn.Linear(64, 64, bias=False)
    opt = AdamW8bit(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    with pytest.raises(CheckpointError, match="block_size=128"):
        AdamW8bit(model.parameters(), block_size=128).load_state_dict(opt.state_dict())


# ---------------------------------------------------------------- paged AdamW


def test_layout_packs_small_tensors_and_splits_large_ones():
    layout = Layout(1024)
    assert layout.place(100) == [Segment(0, 0, 0, 100)]
    assert layout.place(500) == [Segment(1, 0, 0, 500)]  # would straddle: next page
    assert layout.place(1000) == [
        Segment(1, 1000, 0, 12),
        Segment(2, 0, 12, 512),
        Segment(3, 0, 524, 476),
    ]
    assert layout.n_pages == 4


def two_groups(m: nn.Module) -> list[dict]:
    """Decay on one matrix, none and its own lr on the other (as the training loop groups)."""
    return [
        {"params": [m[0].weight], "weight_decay": 0.1},
        {"params": [m[2].weight], "weight_decay": 0.0, "lr": 1e-3},
    ]


def test_paged_adamw_is_bit_identical_to_adamw_while_evicting(tmp_path):
    ref, model = mlp(bias=False), mlp(bias=False)  # two 4096-element matrices: 8 pages each
    ref_opt = torch.optim.AdamW(two_groups(ref), lr=3e-3)
    paging = {"page_bytes": PAGE, "max_resident_bytes": 3 * PAGE, "page_dir": tmp_path}
    opt = PagedAdamW(two_groups(model), lr=3e-3, **paging)
    train(ref, ref_opt, 5)
    train(model, opt, 5)
    assert same_params(ref, model)
    s = opt.paging_stats()
    # 16 pages touched in a cycle with room for 3: every access misses (LRU on a loop).
    assert (s.pages, s.resident_pages, s.resident_bytes) == (16, 3, 3 * PAGE)
    assert (s.page_ins, s.evictions, s.writebacks) == (5 * 16, 5 * 16 - 3, 5 * 16 - 3)
    for a, b in zip(ref_opt.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_paged_adamw_state_dict_loads_both_ways_with_adamw(tmp_path):
    ref, model = mlp(), mlp()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=3e-3)
    paging = {"page_bytes": PAGE, "max_resident_bytes": 2 * PAGE, "page_dir": tmp_path}
    opt = PagedAdamW(model.parameters(), lr=3e-3, **paging)
    train(ref, ref_opt, 3)
    train(model, opt, 3)
    # Cross-load: AdamW's state into a fresh PagedAdamW and PagedAdamW's into a fresh AdamW.
    paged_from_adamw = PagedAdamW(ref.parameters(), lr=3e-3, page_dir=tmp_path)
    paged_from_adamw.load_state_dict(ref_opt.state_dict())
    adamw_from_paged = torch.optim.AdamW(model.parameters(), lr=3e-3)
    adamw_from_paged.load_state_dict(opt.state_dict())
    train(ref, paged_from_adamw, 3, seed=4)
    train(model, adamw_from_paged, 3, seed=4)
    assert same_params(ref, model)


def test_page_file_is_removed_on_close_and_on_garbage_collection(tmp_path):
    model = nn.Linear(8, 8)
    opt = PagedAdamW(model.parameters(), page_dir=tmp_path)
    path = opt.page_file
    assert path.parent == tmp_path and path.stat().st_size == 1 << 20  # one default page
    opt.close()
    assert not path.exists()
    model(torch.ones(8)).sum().backward()
    with pytest.raises(RuntimeError, match="closed"):
        opt.step()
    opt = PagedAdamW(model.parameters(), page_dir=tmp_path)
    path = opt.page_file
    del opt
    gc.collect()
    assert not path.exists() and list(tmp_path.iterdir()) == []


def no_space(fd: int, offset: int, length: int) -> None:
    raise OSError(28, "No space left on device")


def test_a_group_added_later_grows_the_page_file_or_is_refused(tmp_path, monkeypatch):
    ref, model = mlp(bias=False), mlp(bias=False)  # 4096-element matrices: 8 pages each
    ref_opt = torch.optim.AdamW([ref[0].weight])
    opt = PagedAdamW([model[0].weight], page_bytes=PAGE, page_dir=tmp_path)
    ref_opt.add_param_group({"params": [ref[2].weight], "lr": 1e-2})
    opt.add_param_group({"params": [model[2].weight], "lr": 1e-2})
    assert opt.paging_stats().pages == 16 and opt.page_file.stat().st_size == 16 * PAGE
    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(ConfigError, match="free disk"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(4096))]})
    assert len(opt.param_groups) == 2 and opt.page_file.stat().st_size == 16 * PAGE
    train(ref, ref_opt, 3)
    train(model, opt, 3)
    assert same_params(ref, model)


def test_a_page_dir_that_is_not_a_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=f"page_dir {re.escape(str(blocker))}.*writable"):
        PagedAdamW(nn.Linear(4, 4).parameters(), page_dir=blocker)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_page_dir_is_a_config_error(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=f"page_dir {re.escape(str(tmp_path))}.*writable"):
            PagedAdamW(nn.Linear(4, 4).parameters(), page_dir=tmp_path)
    finally:
        tmp_path.chmod(0o755)


def test_a_full_disk_is_a_config_error_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(
        ConfigError, match=f"reserve 1.0 MiB .* page_dir {re.escape(str(tmp_path))}.*free disk"
    ):
        PagedAdamW(nn.Linear(4, 4).parameters(), page_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options, message",
    [({"page_bytes": 1000}, "multiple of the OS page size"), ({"max_resident_bytes": 1}, "page")],
)
def test_bad_paging_options_are_config_errors(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        PagedAdamW(nn.Linear(4, 4).parameters(), page_dir=tmp_path, **options)


# ---------------------------------------------------------------- both: checkpoints, registry


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw"])
def test_checkpoint_resume_continues_exactly(tmp_path, name):
    options = {"page_dir": tmp_path / "pages", "page_bytes": PAGE} if name == "paged_adamw" else {}
    run, resumed = mlp(), mlp()
    opt = build_optimizer(name, run.parameters(), lr=3e-3, **options)
    train(run, opt, 4)
    save_checkpoint(tmp_path / "run", 4, run, opt)
    train(run, opt, 4, seed=5)
    fresh = build_optimizer(name, resumed.parameters(), lr=3e-3, **options)
    load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000004", resumed, fresh)
    if name == "adamw8bit":
        assert fresh.state[resumed[0].weight]["exp_avg_code"].dtype == torch.uint8
    train(resumed, fresh, 4, seed=5)
    assert same_params(run, resumed)


def test_build_optimizer_by_name():
    assert OPTIMIZERS.names() == ["adamw", "adamw8bit", "paged_adamw"]
    params = nn.Linear(2, 2).parameters()
    assert isinstance(build_optimizer("adamw", params, lr=0.1), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="'sgd'.*adamw, adamw8bit, paged_adamw"):
        build_optimizer("sgd", nn.Linear(2, 2).parameters())
    with pytest.raises(ConfigError, match="'adamw8bit'.*page_bytes"):
        build_optimizer("adamw8bit", nn.Linear(2, 2).parameters(), page_bytes=4096)


@pytest.mark.parametrize("cls", [AdamW8bit, PagedAdamW])
def test_constructor_matches_torch_adamw(cls):
    ours, theirs = (
        inspect.signature(cls).parameters,
        inspect.signature(torch.optim.AdamW).parameters,
    )
    for name in ("params", "lr", "betas", "eps", "weight_decay"):
        assert ours[name].default == theirs[name].default
    with pytest.raises(ConfigError, match="betas"):
        cls(nn.Linear(2, 2).parameters(), betas=(0.9, 1.0))
