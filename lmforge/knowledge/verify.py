"""Output-level knowledge: check an answer against the evidence, claim by claim.

    answer ─► claims (its sentences, citation marks removed)
           ─► for each claim: p(Yes) that the evidence supports it, read from the LM's
              likelihood of " Yes" against " No" after an entailment prompt (lm.py)
           ─► supported share = claims with p(Yes) ≥ threshold / claims
           ─► accept (all supported) | flag (some) | reject (share < reject_below)

The same judge gives RAG evaluation its faithfulness score (evaluation.py). A small model
is a weak judge: the measured agreement is in docs/knowledge.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmforge.knowledge.chunking import CJK
from lmforge.knowledge.lm import LM

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


def support(lm: LM, statements: Sequence[str], evidence: Sequence[str]) -> list[float]:
    """p(Yes) that `evidence` supports each statement."""
    if not statements:
        return []
    room = max(16, lm.window - 64 - max(lm.count(s) for s in statements))
    text = fit_evidence(lm, evidence, room)
    prompts = [ENTAILMENT_PROMPT.format(evidence=text, claim=s) for s in statements]
    return lm.yes_probability(prompts)


@dataclass
class Verdict:
    claims: list[str]
    support: list[float]  # p(Yes) per claim
    supported: float  # share of claims with p(Yes) >= threshold (1.0 with no claims)
    decision: str  # accept | flag | reject
    unsupported: list[str] = field(default_factory=list)  # the claims below the threshold


def verify_answer(
    lm: LM,
    answer: str,
    evidence: Sequence[str],
    threshold: float = 0.5,
    reject_below: float = 0.5,
) -> Verdict:
    """Accept an answer whose every claim the evidence supports, flag one with some
    unsupported claims, reject one where fewer than `reject_below` of them are supported."""
    found = claims(answer)
    scores = support(lm, found, evidence)
    ok = [s >= threshold for s in scores]
    share = sum(ok) / len(ok) if ok else 1.0
    decision = "accept" if share == 1.0 else ("flag" if share >= reject_below else "reject")
    unsupported = [c for c, good in zip(found, ok) if not good]
    return Verdict(found, scores, share, decision, unsupported)
