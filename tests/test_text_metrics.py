"""String overlap metrics against values computed by hand."""

import pytest

from lmforge.text_metrics import exact_match, lcs_length, normalize_text, rouge_l, token_f1


def test_normalize_text_follows_squad():
    assert normalize_text("  The Cat, an Owl & a DOG!  ") == "cat owl dog"


def test_exact_match_normalises():
    assert exact_match("The Cat!", "cat") == 1.0
    assert exact_match("cat", "dog") == 0.0


def test_token_f1_by_hand():
    # pred → [cat, sat, on, mat], ref → [cat, sat]: P = 2/4, R = 2/2, F1 = 2·.5·1/1.5
    assert token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    # repeated tokens count min(pred, ref) times: overlap x:1 + y:1 = 2; P = R = 2/3
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("x", "y") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_lcs_length_textbook_case():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # CLRS: BCBA
    assert lcs_length([], list("ABC")) == 0


def test_rouge_l_by_hand():
    # LCS(w x y z, w y z q r s) = w y z = 3: P = 3/4, R = 3/6, F = 2·.75·.5/1.25 = 0.6
    assert rouge_l("w x y z", "w y z q r s") == pytest.approx(0.6)
    # Lin (2004): LCS("police killed gunman", "police kill gunman") = 2, P = R = 2/3
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 / 3)
    assert rouge_l("same words", "same words") == 1.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0
