"""Chinese label words: scoring only a label's first token cannot tell 名词 from 动词 under a
byte-level tokenizer that holds neither character (both spell " " + e5 …), while scoring the
whole label learns the task after the same short tuning."""

import random

import pytest
import torch

from lmforge.model import CausalLM, preset
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives import ClassificationObjective, LabelWords, accuracy

NOUNS, VERBS = "山水花草木林石田", "走跑看听说写读学"  # each class's text draws from its own pool
WORDS = ["名词", "动词"]  # noun, verb: the same first byte e5 in UTF-8


def batch(tok: Tokenizer, rng: random.Random, n: int) -> dict[str, torch.Tensor]:
    classes = [i % 2 for i in range(n)]  # balanced
    texts = ["".join(rng.choices((NOUNS, VERBS)[c], k=6)) + "\n词性：" for c in classes]
    ids = torch.tensor([tok.encode(t) for t in texts])  # (n, T): equal lengths, no padding
    mask, class_ids = torch.ones_like(ids), torch.tensor(classes)
    return {"input_ids": ids, "attention_mask": mask, "class_ids": class_ids}


def tuned_accuracy(tok: Tokenizer, words: LabelWords) -> float:
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tok.vocab_size))
    objective, rng = ClassificationObjective(words), random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = objective(model, batch(tok, rng, 16))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return accuracy(model, [batch(tok, random.Random(1), 64)], words)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(["The part of speech of a word: noun or verb. " * 40], vocab_size=300)


def test_first_token_scoring_is_at_chance_and_whole_labels_learn(tok):
    whole = LabelWords.encode(tok, WORDS)
    assert whole.sequences[0][:2] == whole.sequences[1][:2]  # " " and the lead byte e5
    first = LabelWords(whole.words, [s[:1] for s in whole.sequences], whole.chars)
    assert tuned_accuracy(tok, first) == 0.5  # tied scores: always the first class
    assert tuned_accuracy(tok, whole) >= 0.9
