"""Demonstration selection: deterministic under a seed, balanced, fixed, nearest (fake and
real MiniLM encoders)."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, RegistryError
from lmforge.prompting import SELECTORS, Sample, SelectionConfig, make_selector, mean_pool

POOL = [
    Sample({"text": f"doc {i}"}, "ab"[i % 2] if i < 8 else "c", origin=str(i)) for i in range(10)
]
QUERY = Sample({"text": "query"}, "a")


def picks(selector, index, k):
    return [int(s.origin) for s in selector.select(QUERY, index, k)]


@pytest.mark.parametrize("name", ["random", "balanced", "fixed"])
def test_same_seed_same_demonstrations(name):
    a = make_selector(name, POOL, SelectionConfig(seed=3))
    b = make_selector(name, POOL, SelectionConfig(seed=3))
    first = [picks(a, i, 4) for i in range(5)]
    assert first == [picks(b, i, 4) for i in range(5)]
    assert [picks(a, i, 4) for i in reversed(range(5))] == first[::-1]  # no hidden state
    assert all(len(set(p)) == 4 for p in first)  # without replacement


def test_random_draws_differ_per_query_and_per_seed():
    a = make_selector("random", POOL, SelectionConfig(seed=0))
    b = make_selector("random", POOL, SelectionConfig(seed=1))
    assert len({tuple(picks(a, i, 4)) for i in range(6)}) > 1
    assert [picks(a, i, 4) for i in range(6)] != [picks(b, i, 4) for i in range(6)]


def test_fixed_is_the_same_for_every_query_and_honours_indices():
    drawn = make_selector("fixed", POOL, SelectionConfig(seed=5))
    assert len({tuple(picks(drawn, i, 3)) for i in range(6)}) == 1
    given = make_selector("fixed", POOL, SelectionConfig(indices=[7, 2, 9]))
    assert picks(given, 4, 2) == [7, 2] and picks(given, 0, 3) == [7, 2, 9]
    with pytest.raises(ConfigError, match="only 3 fixed"):
        given.select(QUERY, 0, 4)
    with pytest.raises(ConfigError, match="index 12 is outside"):
        make_selector("fixed", POOL, SelectionConfig(indices=[12]))


def test_balanced_counts_differ_by_at_most_one():
    s = make_selector("balanced", POOL, SelectionConfig(seed=2))
    labels = [POOL[i].target for i in picks(s, 0, 6)]
    assert Counter(labels) == {"a": 2, "b": 2, "c": 2}
    for k in (1, 2, 3, 4, 5, 7):
        counts = Counter(POOL[i].target for i in picks(s, k, k)).values()
        assert max(counts) - min(counts) <= 1 and sum(counts) == k
    # c has only two examples: beyond them the other labels fill the rest
    assert Counter(POOL[i].target for i in picks(s, 1, 10)) == {"a": 4, "b": 4, "c": 2}


@pytest.mark.parametrize("name", ["random", "balanced", "fixed"])
def test_more_shots_than_the_pool_is_an_error(name):
    s = make_selector(name, POOL)
    with pytest.raises(
        ConfigError, match="shots=11 asks for more demonstrations than the pool holds \\(10\\)"
    ):
        s.select(QUERY, 0, 11)


def test_unknown_strategy_lists_the_registered_ones():
    with pytest.raises(RegistryError, match="registered: balanced, fixed, nearest, random"):
        make_selector("similar", POOL)
    assert SELECTORS.names() == ["balanced", "fixed", "nearest", "random"]


VOCAB = ["goal", "match", "vote", "party", "chip", "phone"]


def bag_of_words(texts):
    """A fake encoder: word counts over VOCAB, L2-normalised."""
    rows = [[t.split().count(w) for w in VOCAB] for t in texts]
    return F.normalize(torch.tensor(rows, dtype=torch.float) + 1e-6, dim=-1)


def test_nearest_orders_by_similarity_most_similar_last():
    texts = [
        "goal match",
        "vote party",
        "chip phone",
        "goal goal match",
        "vote",
        "party vote party",
    ]
    pool = [Sample({"text": t}, "x", origin=str(i)) for i, t in enumerate(texts)]
    s = make_selector("nearest", pool, SelectionConfig(embed=bag_of_words))
    query = Sample({"text": "vote party"}, "x")
    # "vote party" itself is skipped; then cosine: 5 (0.949) > 4 (0.707) > the rest (0)
    assert [d.origin for d in s.select(query, 0, 2)] == ["4", "5"]
    assert [d.origin for d in s.select(query, 0, 3)] == ["0", "4", "5"]  # a tie: lowest index
    with pytest.raises(ConfigError, match="needs an encoder"):
        make_selector("nearest", pool)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]


@pytest.mark.assets
def test_minilm_embeddings_are_unit_vectors_and_batch_invariant():
    from lmforge.prompting import SentenceEncoder

    encoder = SentenceEncoder(batch_size=4)
    texts = [
        "The striker scored twice in the cup final.",
        "Shares fell after the bank reported losses.",
        "The new phone has a faster chip.",
        "Parliament voted on the budget.",
        "A long sentence about football, goals and the league table this season.",
    ]
    together = encoder(texts)  # (5, 384), padded batches of 4 and 1
    alone = torch.cat([encoder([t]) for t in texts])
    assert together.shape == (5, 384)
    assert torch.allclose(together.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(together, alone, atol=1e-5)
    pool = [Sample({"text": t}, "x", origin=str(i)) for i, t in enumerate(texts[:4])]
    nearest = make_selector("nearest", pool, SelectionConfig(embed=encoder))
    assert nearest.select(Sample({"text": texts[4]}, "x"), 0, 1)[0].origin == "0"
