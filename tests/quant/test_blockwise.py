"""The block-wise 8-bit codec: the dynamic maps, both roundings, and the exact codes that NF4's
double quantization ("grid", bitsandbytes' map) and 8-bit AdamW ("nearest", tree maps) store.

The stored hashes are the codes of seeded tensors built with exact operations (normal values
times powers of two) and of values on each rounding boundary; they hold on any CPU, and a
change to either user's codes (even of the last bit of x / absmax) fails here.
"""

import hashlib
import math

import pytest
import torch

from lmforge.errors import RegistryError
from lmforge.quant.blockwise import (
    NearestCode,
    dequantize_blockwise,
    dynamic_map,
    dynamic_tree_map,
    grid_codes,
    quantize_blockwise,
)

POW2 = torch.tensor([2.0**k for k in range(-40, 41)])  # exact powers of two: 2^k at k + 40


def sample(signed: bool, seed: int) -> torch.Tensor:
    """40 blocks of 256 and a ragged 77 spread over 2^-30..2^6, block 3 all zeros."""
    g = torch.Generator().manual_seed(seed)
    n = 256 * 40 + 77
    x = torch.randn(n, generator=g) * POW2[40 - torch.randint(0, 24, (n,), generator=g)]
    x = x * POW2[40 + torch.randint(-6, 7, (41,), generator=g)].repeat_interleave(256)[:n]
    x[3 * 256 : 4 * 256] = 0.0
    return x if signed else x.abs()


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("signed, smallest, per_decade", [(True, 1e-6, 64), (False, 1e-7, 128)])
def test_dynamic_map_has_the_dynamic_tree_structure(signed, smallest, per_decade):
    q = dynamic_tree_map(signed)
    assert q.shape == (256,) and torch.all(q[1:] >= q[:-1])
    assert q.max() == 1.0 and q.min() == (-1.0 if signed else 0.0)
    assert len(set(q.tolist())) == (255 if signed else 256)  # signed: +0 and -0 coincide
    positive = q[q > 0].double()
    assert positive.min().item() == pytest.approx(smallest, rel=1e-6)
    # Each decade (10^-(E+1), 10^-E] has half the codes of the one above it.
    for e in range(7 if signed else 8):
        in_decade = (positive > 10 ** -(e + 1) * (1 + 1e-6)) & (positive <= 10**-e * (1 + 1e-6))
        assert int(in_decade.sum()) == per_decade >> e


@pytest.mark.parametrize("signed", [True, False])
def test_map_values_round_trip_exactly(signed):
    q = dynamic_tree_map(signed)
    x = torch.cat([q * 3.5, q * 0.02])  # two blocks of 256 with absmax 3.5 and 0.02
    codes, absmax = quantize_blockwise(x, q)
    assert codes.dtype == torch.uint8 and torch.equal(absmax, torch.tensor([3.5, 0.02]))
    assert torch.equal(dequantize_blockwise(codes, absmax, q), x)


def half_gap(normed: torch.Tensor, signed: bool) -> torch.Tensor:
    """Worst nearest-rounding error of |x| ≤ 1: half the code spacing of x's decade."""
    bits = 7 if signed else 8
    mag = normed.abs().double().clamp_min(1e-30)
    e = torch.floor(-torch.log10(mag)).clamp(0, bits - 2)  # decade (10^-(e+1), 10^-e]
    bound = 0.45 * 10.0**-e / 2.0 ** (bits - 1 - e)
    smallest = 10.0 ** -(bits - 1)
    below = mag <= smallest  # between 0 and the smallest code (rounded up for unsigned)
    return torch.where(below, torch.full_like(mag, smallest * (0.5 if signed else 1.0)), bound)


@pytest.mark.parametrize("signed", [True, False])
def test_blockwise_error_is_within_half_a_code_step(signed):
    g = torch.Generator().manual_seed(0)
    n = 256 * 40 + 77  # a ragged last block
    mags = 10 ** (-9 * torch.rand(n, generator=g))  # log-uniform over 1e-9 .. 1
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if signed else 1.0
    scale = 10 ** (4 * torch.rand(n // 256 + 1, generator=g) - 2).repeat_interleave(256)[:n]
    x = (mags * signs * scale).float()
    q = dynamic_tree_map(signed)
    codes, absmax = quantize_blockwise(x, q, round_up_tiny=not signed)
    assert codes.shape == (n,) and absmax.shape == (math.ceil(n / 256),)
    y = dequantize_blockwise(codes, absmax, q)
    a = absmax.repeat_interleave(256)[:n].double()
    bound = a * half_gap(x / a, signed) * (1 + 1e-5) + a * 1e-7
    assert torch.all((y.double() - x.double()).abs() <= bound)
    if not signed:  # a positive second moment never decodes to 0
        assert torch.all(y[x > 0] > 0)


@pytest.mark.parametrize("signed", [True, False])
def test_nearest_code_equals_bucketize_on_every_edge(signed):
    qmap = dynamic_tree_map(signed)
    mids = (qmap[1:] + qmap[:-1]) / 2
    up, down = torch.tensor(2.0), torch.tensor(-2.0)
    x = torch.cat(
        [
            torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 2 - int(signed),
            torch.rand(10_000, generator=torch.Generator().manual_seed(1)) * 1e-6,
            mids,  # ties go to the lower code
            torch.nextafter(mids, up),
            torch.nextafter(mids, down),
            qmap,
            torch.tensor([0.0, -0.0, 1.0, -1.0]),
        ]
    )
    coder = NearestCode(qmap)
    assert coder.exact
    assert torch.equal(coder(x), torch.bucketize(x, mids).to(torch.uint8))


def test_nearest_code_falls_back_for_a_map_finer_than_its_buckets():
    qmap = torch.linspace(0.5, 0.5001, 256)  # 256 codes inside one bucket
    coder = NearestCode(qmap)
    x = torch.linspace(0.49, 0.51, 1001)
    assert not coder.exact
    assert torch.equal(coder(x), torch.bucketize(x, (qmap[1:] + qmap[:-1]) / 2).to(torch.uint8))


def test_an_all_zero_block_stays_zero():
    q = dynamic_tree_map(True)
    codes, absmax = quantize_blockwise(torch.zeros(300), q)
    assert torch.equal(dequantize_blockwise(codes, absmax, q), torch.zeros(300))


# ---------------------------------------------------------------- the grid rounding


def test_grid_rounding_is_nearest_to_within_one_grid_step():
    """|ŷ − x| ≤ (nearest rounding's error) + 2/65535 of the block's absmax: the grid point is
    at most 1/65535 from x / absmax, and its code is the one nearest the grid point."""
    qmap = dynamic_map()
    x = sample(True, 2)
    near = dequantize_blockwise(*quantize_blockwise(x, qmap), qmap)
    codes, absmax = quantize_blockwise(x, qmap, rounding="grid")
    grid = dequantize_blockwise(codes, absmax, qmap)
    a = absmax.repeat_interleave(256)[: x.numel()].double()
    slack = a * (2 / 65535) * (1 + 1e-5) + a * 1e-7
    assert torch.all((grid.double() - x).abs() <= (near.double() - x).abs() + slack)
    # Where the map is coarser than the grid (|x| ≥ absmax / 100) the two differ by ≤ 1 code.
    apart = (codes.int() - quantize_blockwise(x, qmap)[0].int()).abs()
    coarse = (x.abs() >= a / 100) & (a > 0)
    assert int(apart[coarse].max()) == 1 and int((apart[coarse] > 0).sum()) < coarse.sum() // 20
    assert codes[3 * 256 : 4 * 256].tolist() == [0] * 256  # an all-zero block stores code 0


def test_grid_codes_are_the_nearest_code_of_each_grid_point():
    qmap = dynamic_map()
    grid = -1.0 + 2.0 * torch.arange(65536, dtype=torch.float32) / 65535
    assert torch.equal(grid_codes(qmap), NearestCode(qmap)(grid))


def test_an_unknown_rounding_is_named():
    with pytest.raises(RegistryError, match="8-bit rounding 'floor'; registered: grid, nearest"):
        quantize_blockwise(torch.ones(4), dynamic_map(), rounding="floor")


# ---------------------------------------------------------------- both users, exactly as before


def test_the_maps_are_the_stored_tables():
    assert digest(dynamic_map()) == "e732639a65f497b4"  # == bitsandbytes' create_dynamic_map()
    assert digest(dynamic_tree_map(True)) == "9217c638673e7df2"
    assert digest(dynamic_tree_map(False)) == "8be1eede72be5d64"
    assert digest(grid_codes(dynamic_map())) == "dddf35d1312b15e6"
    assert (dynamic_map() - dynamic_tree_map(True)).abs().max() > 0.007  # two tables on purpose


USERS = {  # how each user calls the codec: map, rounding, round_up_tiny, sample's sign and seed
    "nf4 double quantization": (dynamic_map, "grid", False, True, 0),
    "adamw8bit m": (lambda: dynamic_tree_map(True), "nearest", False, True, 1),
    "adamw8bit v": (lambda: dynamic_tree_map(False), "nearest", True, False, 1),
}


def on_boundaries(user: str) -> torch.Tensor:
    """Values on the user's rounding boundaries (map midpoints, or the grid points where the
    code changes) and their float neighbours, in blocks whose absmax (0.7, 3, 1e-3/3, 123.456)
    is no power of two: the last bit of x / absmax decides each code."""
    qmap, rounding = USERS[user][0](), USERS[user][1]
    if rounding == "grid":
        g = torch.nonzero(grid_codes(qmap)[1:] != grid_codes(qmap)[:-1]).view(-1)
        bounds = -1.0 + (2.0 * g.float() + 1.0) / 65535  # half-way between grid points
    else:
        bounds = (qmap[1:] + qmap[:-1]) / 2
    up, down = torch.tensor(2.0), torch.tensor(-2.0)
    b = torch.cat([bounds, torch.nextafter(bounds, up), torch.nextafter(bounds, down)])
    scales = (0.7, 3.0, 1e-3 / 3, 123.456)
    blocks = [
        torch.cat([torch.ones(1), b[i : i + 255]]) * a
        for a in scales
        for i in range(0, len(b), 255)
    ]
    return torch.cat(blocks)


@pytest.mark.parametrize(
    "user, values, codes_digest, absmax_digest",
    [
        ("nf4 double quantization", "spread", "36167960ad258d35", "ab5c0af1a239fc50"),
        ("nf4 double quantization", "boundaries", "287653ed230f9c5a", "04d2474a7575ee17"),
        ("adamw8bit m", "spread", "1f134228f4946f80", "db1a91efc837c908"),
        ("adamw8bit m", "boundaries", "6f7abac52040e393", "601ba47ac131d929"),
        ("adamw8bit v", "spread", "c3197b743f510c5e", "db1a91efc837c908"),
        ("adamw8bit v", "boundaries", "198c5178b5523aa6", "601ba47ac131d929"),
    ],
)
def test_each_user_stores_the_codes_it_always_stored(user, values, codes_digest, absmax_digest):
    qmap, rounding, round_up_tiny, signed, seed = USERS[user]
    x = sample(signed, seed) if values == "spread" else on_boundaries(user)
    codes, absmax = quantize_blockwise(
        x, qmap(), 256, rounding=rounding, round_up_tiny=round_up_tiny
    )
    assert (digest(codes), digest(absmax)) == (codes_digest, absmax_digest)
    if (user, values) == ("nf4 double quantization", "spread"):
        assert codes[:8].tolist() == [123, 122, 96, 61, 131, 131, 123, 21]
        assert digest(dequantize_blockwise(codes, absmax, qmap())) == "40cc06065cce702f"
