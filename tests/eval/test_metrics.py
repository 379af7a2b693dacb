"""The metric registry and means, against values computed by hand."""

import pytest

from lmforge.errors import DataError, RegistryError
from lmforge.eval.metrics import METRICS, accuracy, mean_metric


def test_accuracy_is_exact_string_equality():
    assert accuracy("17", "17") == 1.0
    assert accuracy("17", "17.0") == 0.0
    assert accuracy("Sport", "sport") == 0.0


def test_mean_metric_and_registry():
    assert mean_metric("accuracy", ["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    assert mean_metric("token_f1", ["x x y", "x"], ["x y y", "x"]) == pytest.approx((2 / 3 + 1) / 2)
    assert set(METRICS.names()) == {"accuracy", "exact_match", "rouge_l", "token_f1"}
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        mean_metric("accuracy", ["a", "b"], ["a"])
    with pytest.raises(RegistryError, match="registered: accuracy, exact_match"):
        mean_metric("bleu", ["a"], ["a"])
