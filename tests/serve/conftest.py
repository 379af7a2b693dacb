"""The tiny tokenizer and model every serving test module starts from (one per module)."""

import pytest

from tests.serve.helpers import model, tokenizer


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def base(tok):
    return model(tok.vocab_size)
