"""Output-level knowledge: check an answer against the evidence, claim by claim.

    answer ─► claims (its sentences, citation marks removed)
           ─► for each claim: a support score from the LM (a judge of JUDGES)
           ─► supported share = claims scoring ≥ the judge's threshold / claims
           ─► accept (all supported) | flag (some) | reject (share < reject_below)

Two judges, both read from the LM's log-likelihoods (never from parsed free text):

    pmi          gain = [log p(claim | evidence) − log p(claim)] / tokens of the claim
                 supported when the evidence makes each token e^1 times likelier or more
    entailment   p(Yes) = softmax over " Yes" / " No" after "Does the evidence support
                 the claim?" (lm.py); supported when p(Yes) ≥ 0.5

A small model is a weak entailment judge: on sentences whose answer is known (copied from
the passage they are judged against, or taken from another one; `evaluation.judge_agreement`)
SmolLM2-135M's p(Yes) separates them no better than chance (AUC 0.50), while its
pointwise mutual information does (AUC ≥ 0.99), so `pmi` is the default. It measures how much
the evidence explains the claim's words, which a paraphrase earns less of than a copy: read
it as "grounded in the sources", not as logical entailment. The same judge gives RAG
evaluation its faithfulness score (evaluation.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lmforge.eval.loglik import Request, loglikelihoods
from lmforge.knowledge.lm import LM
from lmforge.registry import Registry
from lmforge.text_metrics import CJK

ENTAILMENT_PROMPT = (
    "Evidence:\n{evidence}\n\nClaim: {claim}\n\n"
    "Does the evidence support the claim? Answer Yes or No."
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")
_CITATION = re.compile(r"\s*\[\d+\]")


def claims(text: str) -> list[str]:
    """The answer's sentences worth checking: at least three words or four CJK characters."""
    out = []
    for sentence in _SENTENCE.split(_CITATION.sub("", text)):
        sentence = sentence.strip()
        cjk = len(re.findall(f"[{CJK}]", sentence))
        if len(sentence.split()) >= 3 or cjk >= 4:
            out.append(sentence)
    return out


def fit_evidence(lm: LM, evidence: Sequence[str], room: int) -> str:
    """The evidence passages joined, cut to `room` tokens so the prompt fits the window."""
    ids = lm.tokenizer.encode("\n\n".join(e.strip() for e in evidence))
    return lm.tokenizer.decode(ids[:room]) if len(ids) > room else lm.tokenizer.decode(ids)


def entailment(lm: LM, statements: Sequence[str], evidence: Sequence[str]) -> list[float]:
    """p(Yes) that `evidence` supports each statement, after the entailment prompt."""
    room = max(16, lm.window - 64 - max(lm.count(s) for s in statements))
    text = fit_evidence(lm, evidence, room)
    return lm.yes_probability(
        [ENTAILMENT_PROMPT.format(evidence=text, claim=s) for s in statements]
    )


def pmi(lm: LM, statements: Sequence[str], evidence: Sequence[str]) -> list[float]:
    """Per-token log-likelihood gain of each statement after the evidence over after nothing."""
    room = max(16, lm.window - 8 - max(lm.count(s) for s in statements))
    text = fit_evidence(lm, evidence, room)
    requests = [Request(context + "\n\n", " " + s) for s in statements for context in (text, "")]
    lls = loglikelihoods(lm.model, lm.tokenizer, requests, batch_size=lm.batch_size)
    pairs = zip(lls[::2], lls[1::2], strict=True)
    return [(given.logprob - alone.logprob) / max(1, given.tokens) for given, alone in pairs]


@dataclass(frozen=True)
class Judge:
    score: Callable[[LM, Sequence[str], Sequence[str]], list[float]]  # higher: better supported
    threshold: float  # a statement scoring at least this is supported


JUDGES: Registry[Judge] = Registry("support judge")
JUDGES.add("pmi", Judge(pmi, 1.0))
JUDGES.add("entailment", Judge(entailment, 0.5))


def support(
    lm: LM, statements: Sequence[str], evidence: Sequence[str], judge: str = "pmi"
) -> list[float]:
    """Each statement's support score under `judge` (JUDGES)."""
    return JUDGES.get(judge).score(lm, statements, evidence) if statements else []


def supported(
    lm: LM, statements: Sequence[str], evidence: Sequence[str], judge: str = "pmi"
) -> list[bool]:
    """Whether each statement reaches `judge`'s threshold."""
    threshold = JUDGES.get(judge).threshold
    return [score >= threshold for score in support(lm, statements, evidence, judge)]


@dataclass
class Verdict:
    claims: list[str]
    support: list[float]  # the judge's score per claim
    supported: float  # share of claims scoring >= the judge's threshold (1.0 with no claims)
    decision: str  # accept | flag | reject
    unsupported: list[str] = field(default_factory=list)  # the claims below the threshold


def verify_answer(
    lm: LM,
    answer: str,
    evidence: Sequence[str],
    judge: str = "pmi",
    reject_below: float = 0.5,
) -> Verdict:
    """Accept an answer whose every claim the evidence supports, flag one with some
    unsupported claims, reject one where fewer than `reject_below` of them are supported."""
    found = claims(answer)
    scores = support(lm, found, evidence, judge)
    threshold = JUDGES.get(judge).threshold
    ok = [s >= threshold for s in scores]
    share = sum(ok) / len(ok) if ok else 1.0
    decision = "accept" if share == 1.0 else ("flag" if share >= reject_below else "reject")
    unsupported = [c for c, good in zip(found, ok) if not good]
    return Verdict(found, scores, share, decision, unsupported)
