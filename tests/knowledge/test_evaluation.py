"""RAG metrics against hand-computed values, the FAQ parser, and answer verification."""

import math

import pytest

from lmforge.errors import DataError
from lmforge.eval.loglik import Request, loglikelihoods
from lmforge.knowledge.chunking import Chunk
from lmforge.knowledge.evaluation import (
    auc,
    context_precision,
    faithfulness,
    judge_agreement,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)
from lmforge.knowledge.faq import QAItem, load_qa, parse_faq, split_of
from lmforge.knowledge.lm import LM
from lmforge.knowledge.verify import ENTAILMENT_PROMPT, claims, support, verify_answer

RANKED = [False, True, False, True, False]  # gold at ranks 2 and 4; 3 gold chunks exist


def test_retrieval_metrics_by_hand():
    assert recall_at_k(RANKED, 3, 1) == 0.0
    assert recall_at_k(RANKED, 3, 5) == pytest.approx(2 / 3)
    assert reciprocal_rank(RANKED) == 0.5
    assert reciprocal_rank([False] * 3) == 0.0
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RANKED, 3, 5) == pytest.approx(dcg / ideal)
    assert ndcg_at_k([True], 1, 5) == 1.0
    assert context_precision(RANKED) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert context_precision([True, True, False]) == 1.0


FAQ = """\
Programming FAQ
===============

What is a lambda?
-----------------

A lambda is a small anonymous function.

It holds one expression only.

Other Things
============

Why use tuples?
---------------

Tuples are immutable.
"""


def test_the_faq_parser_blanks_questions_and_keeps_exact_spans():
    items, blanked = parse_faq(FAQ, "corpus/faq/programming.rst.txt", min_words=8)
    assert [i.question for i in items] == ["What is a lambda?", "Why use tuples?"]
    first = "A lambda is a small anonymous function.\n\nIt holds one expression only."
    assert items[0].answer == first
    assert all(blanked[i.start : i.end] == i.answer for i in items)
    assert "What is a lambda?" not in blanked and "Other Things" in blanked
    assert blanked.count("\n") == FAQ.count("\n")  # line numbers are those of the original
    assert items[1].answer == "Tuples are immutable." and items[0].id == "programming-1"
    assert items[0].split == split_of("What is a lambda?") in ("dev", "test")


def test_gold_chunks_overlap_the_answer_span(tmp_path):
    item = QAItem("p-1", "q?", "a", "f.rst", 100, 200, "test")
    chunk = lambda s, e, src="f.rst": Chunk("c", src, "t", "", s, e, 1, 1, "")  # noqa: E731
    assert item.is_gold(chunk(150, 300)) and item.is_gold(chunk(0, 101))
    assert not item.is_gold(chunk(200, 300)) and not item.is_gold(chunk(0, 100))
    assert not item.is_gold(chunk(150, 300, "g.rst"))
    path = tmp_path / "qa.jsonl"
    path.write_text('{"id": "x"}\n')
    with pytest.raises(Exception, match=r"qa.jsonl:1: not a QA item"):
        load_qa(path)


def test_claims_are_sentences_without_citation_marks():
    text = "Python is a language [1]. Yes. It was created by Guido [2]! 长城位于中国北方。好。"
    expected = ["Python is a language.", "It was created by Guido!", "长城位于中国北方。"]
    assert claims(text) == expected


class WordJudge(LM):
    """p(Yes) = 0.9 when every word of the claim is in the evidence, else 0.1."""

    def yes_probability(self, users, system=""):
        out = []
        for prompt in users:
            evidence, claim = prompt.split("\n\nClaim: ")
            claim = claim.split("\n\n")[0]
            words = {w.strip(".!?").lower() for w in claim.split()}
            known = {w.strip(".!?").lower() for w in evidence.split()}
            out.append(0.9 if words <= known else 0.1)
        return out


def test_verification_accepts_flags_and_rejects(tiny_lm):
    judge = WordJudge(tiny_lm.model, tiny_lm.tokenizer)
    evidence = ["Python is a programming language. Guido created Python in 1991."]
    ok = verify_answer(judge, "Python is a programming language [1].", evidence, "entailment")
    assert ok.decision == "accept" and ok.supported == 1.0 and ok.support == [0.9]
    half = verify_answer(
        judge, "Guido created Python. Python is made of cheese.", evidence, "entailment"
    )
    assert half.decision == "flag" and half.unsupported == ["Python is made of cheese."]
    bad = verify_answer(
        judge, "Cheese is made of milk. The moon is cheese too.", evidence, "entailment"
    )
    assert bad.decision == "reject" and bad.supported == 0.0
    half_text = "Guido created Python. Python is made of cheese."
    assert faithfulness(judge, half_text, evidence, "entailment") == 0.5


def test_yes_probability_is_the_two_word_softmax(tiny_lm):
    prompt = ENTAILMENT_PROMPT.format(evidence="Sky is blue.", claim="Sky is blue.")
    p = tiny_lm.yes_probability([prompt])[0]
    context = tiny_lm.prompt(prompt)
    yes, no = loglikelihoods(tiny_lm.model, tiny_lm.tokenizer,
                             [Request(context, "Yes"), Request(context, "No")])  # fmt: skip
    odds = math.exp(yes.logprob), math.exp(no.logprob)
    assert p == pytest.approx(odds[0] / (odds[0] + odds[1]))


def test_pmi_is_the_per_token_gain_from_the_evidence(tiny_lm):
    claim, evidence = "Sky is blue.", "The sky is blue today."
    gain = support(tiny_lm, [claim], [evidence], "pmi")[0]
    given, alone = loglikelihoods(tiny_lm.model, tiny_lm.tokenizer,
                                  [Request(evidence + "\n\n", " " + claim),
                                   Request("\n\n", " " + claim)])  # fmt: skip
    assert gain == pytest.approx((given.logprob - alone.logprob) / given.tokens)
    assert support(tiny_lm, [], [evidence]) == []


def test_judge_agreement_scores_copied_against_foreign_sentences(tiny_lm):
    assert auc([0.9, 0.4], [0.5, 0.1]) == 0.75 and auc([0.5], [0.5]) == 0.5
    judge = WordJudge(tiny_lm.model, tiny_lm.tokenizer)
    passages = ["Alpha beta gamma delta. Beta gamma delta epsilon.", "One two three four."]
    agreement = judge_agreement(judge, passages, "entailment")
    assert agreement == {
        "auc": 1.0, "accepts_supported": 1.0, "accepts_unsupported": 0.0, "claims": 6
    }  # fmt: skip
    with pytest.raises(DataError, match="at least two passages"):
        judge_agreement(judge, passages[:1])
