"""A tiny language model for the knowledge tests: a native 2 × 64 decoder with a 512-token
window and a byte-level BPE trained on the test corpus (random weights, fixed seed)."""

import pytest
import torch

from lmforge.knowledge.lm import LM
from lmforge.model import CausalLM, preset
from lmforge.tokenizer import Tokenizer

from .helpers import DOCS


@pytest.fixture(scope="session")
def tiny_lm() -> LM:
    texts = list(DOCS.values()) * 4 + ["<|im_start|>user\nQuestion: why?<|im_end|>\n"] * 4
    tokenizer = Tokenizer.train(texts, vocab_size=400)
    torch.manual_seed(0)
    config = preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=512)
    return LM(CausalLM(config).eval(), tokenizer)
