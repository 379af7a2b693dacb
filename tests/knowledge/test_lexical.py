"""The BM25 score matrix: bm25s's own build, and the formula by hand."""

import math

import numpy as np
import pytest

from lmforge.knowledge.lexical import BM25, score_matrix

bm25s = pytest.importorskip("bm25s")


def test_score_matrix_equals_bm25s_own_build() -> None:
    from bm25s.tokenization import Tokenized

    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 60, size=rng.integers(1, 30)).tolist() for _ in range(40)]
    ids[3] = [60]  # a term in one chunk only; term 61 is in none
    reference = bm25s.BM25()
    reference.index(Tokenized(ids=ids, vocab={str(i): i for i in range(62)}), show_progress=False)
    ours = score_matrix(ids, 62, reference.k1, reference.b)
    assert np.array_equal(ours["indices"], reference.scores["indices"])
    assert np.array_equal(ours["indptr"], reference.scores["indptr"])
    assert np.allclose(ours["data"], reference.scores["data"], rtol=1e-6, atol=0)
    assert ours["num_docs"] == 40


def test_score_matrix_by_hand() -> None:
    # chunk 0 = [a, a, b], chunk 1 = [b]; N = 2, avgdl = 2, k1 = 1.5, b = 0.75
    m = score_matrix([[0, 0, 1], [1]], 2, 1.5, 0.75)
    idf_a, idf_b = math.log(1 + 1.5 / 1.5), math.log(1 + 0.5 / 2.5)
    norm0, norm1 = 1.5 * (0.25 + 0.75 * 3 / 2), 1.5 * (0.25 + 0.75 * 1 / 2)
    expected = [idf_a * 2 / (2 + norm0), idf_b * 1 / (1 + norm0), idf_b * 1 / (1 + norm1)]
    assert m["indptr"].tolist() == [0, 1, 3]
    assert m["indices"].tolist() == [0, 0, 1]
    assert np.allclose(m["data"], expected, rtol=1e-6)


def test_search_ranks_by_the_matrix_and_survives_a_reload(tmp_path) -> None:
    index = BM25.build(["the cat sat", "a dog and a cat and a cat", "nothing here"])
    found = index.search("cat", 3)
    assert [i for i, _ in found] == [1, 0]
    index.save(tmp_path / "bm25")
    assert BM25.load(tmp_path / "bm25").search("cat", 3) == found
    assert BM25.build([]).search("cat", 3) == []
