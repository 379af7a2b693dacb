"""Log-likelihood scoring and perplexity: hand-computed bigram cases, batching, the BPE
boundary, and equality between the native and transformers backends."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors
from torch import nn

from lmforge.errors import DataError
from lmforge.eval.loglik import (
    Request,
    choice_scores,
    choose,
    encode_request,
    loglikelihoods,
)
from lmforge.eval.ppl import perplexity, token_stream
from lmforge.hub import load_model, load_tokenizer
from lmforge.tokenizer import Tokenizer

WORDS = ["<eos>", "ctx", "A", "B1", "B2", "B3", "x"]
ID = {w: i for i, w in enumerate(WORDS)}


def word_tokenizer() -> Tokenizer:
    hf = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="x"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(hf, eos_token="<eos>")


class BigramLM(nn.Module):
    """The next token depends on the current one only: logits[b, t] = table[ids[b, t]]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.log())  # (V, V) log-probabilities

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def bigram() -> BigramLM:
    """After ctx: A with e^-2, B1 with e^-3; B1 → B2 and B2 → B3 with 0.9 each."""
    V = len(WORDS)
    table = torch.full((V, V), 1.0)
    table[ID["ctx"]] = 0.0
    table[ID["ctx"], ID["A"]] = math.exp(-2)
    table[ID["ctx"], ID["B1"]] = math.exp(-3)
    table[ID["ctx"], ID["<eos>"]] = 1 - math.exp(-2) - math.exp(-3)
    for a, b in [("B1", "B2"), ("B2", "B3")]:
        table[ID[a]] = 0.1 / (V - 1)
        table[ID[a], ID[b]] = 0.9
    return BigramLM(table / table.sum(-1, keepdim=True))


def test_loglikelihood_by_hand():
    lls = loglikelihoods(
        bigram(),
        word_tokenizer(),
        [Request("ctx", " A"), Request("ctx", " B1 B2 B3")],
        max_length=16,
    )
    assert lls[0].logprob == pytest.approx(-2.0, abs=1e-6) and lls[0].tokens == 1
    assert lls[1].logprob == pytest.approx(-3 + 2 * math.log(0.9), abs=1e-6)
    assert lls[1].tokens == 3 and lls[1].chars == 9
    assert lls[0].greedy is False and lls[1].greedy is False  # eos is likelier after ctx


def test_length_normalisation_changes_the_choice():
    # sum: A = -2.0 beats B = -3.21; per token: B = -1.07 beats A = -2.0.
    model, tok = bigram(), word_tokenizer()
    choices = [[" A", " B1 B2 B3"]]
    assert choose(model, tok, ["ctx"], choices, normalize="sum", max_length=16) == [0]
    assert choose(model, tok, ["ctx"], choices, normalize="mean", max_length=16) == [1]
    scores = choice_scores(model, tok, ["ctx"], choices, normalize="char", max_length=16)
    assert scores[0] == pytest.approx([-2 / 2, (-3 + 2 * math.log(0.9)) / 9], abs=1e-6)


def test_empty_continuation_and_empty_context():
    tok = word_tokenizer()
    with pytest.raises(DataError, match="adds no tokens"):
        encode_request(tok, Request("ctx", ""), 16)
    assert encode_request(tok, Request("", "ctx A"), 16) == ([ID["<eos>"], ID["ctx"], ID["A"]], 1)
    # too long: the oldest context tokens go, the continuation stays whole
    assert encode_request(tok, Request("ctx ctx ctx", " A"), 2) == (
        [ID["ctx"], ID["ctx"], ID["A"]],
        2,
    )
    with pytest.raises(DataError, match="more than the 2"):
        encode_request(tok, Request("ctx", " B1 B2 B3"), 2)


def test_a_checkpoint_that_adds_bos_gets_it_before_every_context():
    tok = word_tokenizer()
    tok.hf.post_processor = processors.TemplateProcessing(
        single="<eos>:0 $A:0", special_tokens=[("<eos>", ID["<eos>"])]
    )  # as a Llama tokenizer.json puts <s> before every input
    assert tok.input_specials == ([ID["<eos>"]], [])
    assert encode_request(tok, Request("ctx", " A"), 16) == ([0, ID["ctx"], ID["A"]], 2)
    assert encode_request(tok, Request("", "ctx A"), 16) == ([0, ID["ctx"], ID["A"]], 1)
    assert token_stream(tok, ["ctx A", "A"]) == [0, ID["ctx"], ID["A"], 0, 0, ID["A"]]


def test_bpe_boundary_takes_the_tail_of_the_whole_encoding():
    tok = Tokenizer.train(["Topic: sport. Topic: tech. Topic: sports."] * 50, vocab_size=300)
    whole, n = encode_request(tok, Request("Topic:", " sport"), 64)
    assert whole == tok.encode("Topic: sport") and n == len(tok.encode("Topic:"))
    # "Topic: " ends in a space token that merges into " sport": it is scored with the choice
    whole, n = encode_request(tok, Request("Topic: ", "sport"), 64)
    assert whole == tok.encode("Topic: sport")
    assert n == len(tok.encode("Topic: ")) - 1
    assert tok.decode(whole[:n]) == "Topic:" and tok.decode(whole[n:]) == " sport"


def _brute_force(model, tok, request):
    """One unpadded row, the whole logits, a plain log-softmax: the reference."""
    whole, n = encode_request(tok, request, 10_000)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(float(logp[i - 1, whole[i]]) for i in range(n, len(whole)))


REQUESTS = [
    Request("To be, or not to be,", " that is the question"),
    Request("To be, or not to be,", " the slings"),
    Request("To be, or not to be,", " that"),
    Request("Whether 'tis nobler", " in the mind"),
    Request("The slings and arrows of outrageous", " fortune"),
    Request("The slings and arrows of outrageous", " sea"),
    Request("", "Or to take arms"),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


def test_scores_equal_brute_force_at_any_batch_size(tiny):
    model, tok = tiny
    expected = [_brute_force(model, tok, r) for r in REQUESTS]
    for batch_size in (1, 3, 16):
        got = [ll.logprob for ll in loglikelihoods(model, tok, REQUESTS, batch_size=batch_size)]
        assert got == pytest.approx(expected, abs=1e-4)


def test_unsliced_wrapper_gives_the_same_scores(tiny):
    model, tok = tiny

    class Wrapper(nn.Module):  # neither native nor transformers: no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            assert "logits_to_keep" not in kwargs
            return self.inner(**kwargs)

    plain = [ll.logprob for ll in loglikelihoods(model, tok, REQUESTS)]
    wrapped = [ll.logprob for ll in loglikelihoods(Wrapper(model), tok, REQUESTS, max_length=128)]
    assert wrapped == pytest.approx(plain, abs=1e-5)


def test_the_likeliest_choice_is_chosen(tiny):
    model, tok = tiny
    context = "The slings and arrows of outrageous"
    options = [" fortune", " sea", " question", " mind"]
    scores = [_brute_force(model, tok, Request(context, o)) for o in options]
    assert choose(model, tok, [context], [options]) == [max(range(4), key=scores.__getitem__)]


def test_native_and_transformers_scores_agree(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    native = loglikelihoods(load_model(tiny_model_dir, backend="native"), tok, REQUESTS)
    hf = loglikelihoods(load_model(tiny_model_dir, backend="hf"), tok, REQUESTS)
    assert [a.logprob for a in native] == pytest.approx([b.logprob for b in hf], abs=1e-4)
    assert [a.greedy for a in native] == [b.greedy for b in hf]


def test_perplexity_of_a_bigram_by_hand():
    model, tok = bigram(), word_tokenizer()
    # stream: ctx A <eos> ctx B1 B2 B3 — every token after the first predicted once
    result = perplexity(model, tok, ["ctx A", "ctx B1 B2 B3"], max_length=2, batch_size=2)
    t = model.table.detach()
    pairs = [
        ("ctx", "A"),
        ("A", "<eos>"),
        ("<eos>", "ctx"),
        ("ctx", "B1"),
        ("B1", "B2"),
        ("B2", "B3"),
    ]
    nll = -sum(float(t[ID[a], ID[b]]) for a, b in pairs) / len(pairs)
    assert result.tokens == 6 and result.windows == 3
    assert result.nll == pytest.approx(nll, abs=1e-6)
    assert result.perplexity == pytest.approx(math.exp(nll), rel=1e-6)


def test_token_stream_limit_and_separators():
    tok = word_tokenizer()
    assert token_stream(tok, ["ctx A", "B1 B2"]) == [1, 2, 0, 3, 4]
    assert token_stream(tok, ["ctx A", "B1 B2", "B3"], max_tokens=3) == [1, 2, 0, 3]


def test_perplexity_matches_the_model_loss_in_one_window(tiny):
    model, tok = tiny
    text = "To be, or not to be, that is the question"
    ids = tok.encode(text)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0]
    expected = float(F.cross_entropy(logits, torch.tensor(ids[1:])))
    result = perplexity(model, tok, [text], max_length=len(ids))
    assert result.windows == 1 and result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(expected, abs=1e-5)
    two = perplexity(model, tok, [text], max_length=len(ids) // 2 + 1, max_tokens=len(ids) - 1)
    assert two.windows == 2 and two.tokens == len(ids) - 1
    with pytest.raises(DataError, match="at least two tokens"):
        perplexity(model, tok, [""])
