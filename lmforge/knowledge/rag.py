"""Retrieval-augmented generation: numbered sources packed into the model's window, an
answer that cites them.

    question ─► Retriever (retrieve.py) ─► hits, best first
             ─► pack: "[1] title › section\\n text" blocks while they fit in
                      window − answer tokens − the prompt around them
                      (a first source too long for the room is cut to fit)
             ─► chat template: system (cite like [1]) + user (sources, question)
             ─► greedy answer ─► citations = the [n] it names that exist

Closed-book answering is the same prompt without sources, the baseline RAG is measured
against.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from lmforge.errors import ConfigError
from lmforge.knowledge.index import KnowledgeIndex
from lmforge.knowledge.lm import LM
from lmforge.knowledge.retrieve import Hit, RetrievalConfig, Retriever

SYSTEM = (
    "Answer the question with the numbered sources. Cite each source you use by its number "
    "in brackets, like [1]. If the sources do not answer it, say that you do not know."
)
CLOSED_BOOK_SYSTEM = "Answer the question briefly."
_CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class RAGConfig(RetrievalConfig):
    max_new_tokens: int = 128  # longest answer, in tokens
    context_tokens: int = 0  # most tokens of sources; 0 = whatever the window leaves
    system: str = SYSTEM  # the system message that asks for cited answers

    def validate(self) -> None:
        super().validate()
        if self.max_new_tokens < 1 or self.context_tokens < 0:
            raise ConfigError("max_new_tokens must be >= 1 and context_tokens >= 0")


@dataclass
class Answer:
    question: str
    text: str  # the model's answer
    sources: list[Hit]  # the numbered sources the prompt held, [1] first
    cited: list[int] = field(default_factory=list)  # source numbers the answer cites
    prompt_tokens: int = 0  # tokens of the templated prompt
    seconds: float = 0.0  # retrieval + generation time

    def references(self) -> list[str]:
        """'[n] path:lines' for every source, the cited ones marked with '*'."""
        return [
            f"[{n}]{'*' if n in self.cited else ' '} {h.chunk.citation}  {h.chunk.section}"
            for n, h in enumerate(self.sources, start=1)
        ]


def source_block(number: int, hit: Hit, text: str | None = None) -> str:
    chunk = hit.chunk
    label = chunk.title
    if chunk.section and chunk.section != chunk.title:
        label += f" › {chunk.section}"
    return f"[{number}] {label}\n{(text if text is not None else chunk.text).strip()}"


def user_message(question: str, blocks: list[str]) -> str:
    if not blocks:
        return f"Question: {question}"
    return "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}"


def pack_sources(lm: LM, hits: list[Hit], room: int) -> list[tuple[Hit, str]]:
    """(hit, source block) in rank order, as many as fit in `room` tokens together."""
    kept: list[tuple[Hit, str]] = []
    used = 0
    for hit in hits:
        block = source_block(len(kept) + 1, hit)
        cost = lm.count(block) + 2  # the blank line between blocks
        if used + cost <= room:
            kept.append((hit, block))
            used += cost
        elif not kept and room > 16:  # nothing fits yet: cut the best source to the room
            ids = lm.tokenizer.encode(hit.chunk.text)[: room - lm.count(source_block(1, hit, ""))]
            kept.append((hit, source_block(1, hit, lm.tokenizer.decode(ids))))
            used = room
    return kept


def cited_numbers(text: str, n_sources: int) -> list[int]:
    """Numbers [n] in the text that name one of the sources, in order of first mention."""
    found = (int(m) for m in _CITATION.findall(text))
    return list(dict.fromkeys(n for n in found if 1 <= n <= n_sources))


class RAG:
    """Ask questions of an index with a language model (any model lmforge loads)."""

    def __init__(self, index: KnowledgeIndex, lm: LM, config: RAGConfig | None = None) -> None:
        self.config = config or RAGConfig()
        self.config.validate()
        self.index, self.lm = index, lm
        self.retriever = Retriever(index, self.config, lm)

    def room(self, question: str) -> int:
        """Tokens left for sources: window − answer − the prompt without sources."""
        bare = self.lm.count(self.lm.prompt(user_message(question, ["x"]), self.config.system))
        room = self.lm.window - self.config.max_new_tokens - bare
        if self.config.context_tokens:
            room = min(room, self.config.context_tokens)
        return room

    def prompt(self, question: str, hits: list[Hit]) -> tuple[str, list[Hit]]:
        packed = pack_sources(self.lm, hits, self.room(question))
        text = self.lm.prompt(user_message(question, [b for _, b in packed]), self.config.system)
        return text, [h for h, _ in packed]

    def ask(self, question: str, hits: list[Hit] | None = None) -> Answer:
        """Retrieve (unless `hits` are given), pack, answer, and read the citations."""
        return self.ask_many([question], [hits] if hits is not None else None)[0]

    def ask_many(self, questions: list[str], hits: list[list[Hit]] | None = None) -> list[Answer]:
        start = time.perf_counter()
        hits = hits if hits is not None else [self.retriever.retrieve(q) for q in questions]
        prompts = [self.prompt(q, h) for q, h in zip(questions, hits)]
        texts = self.lm.complete([p for p, _ in prompts], self.config.max_new_tokens)
        seconds = (time.perf_counter() - start) / max(1, len(questions))
        return [
            Answer(q, t, kept, cited_numbers(t, len(kept)), self.lm.count(p), seconds)
            for q, t, (p, kept) in zip(questions, texts, prompts)
        ]


def closed_book(lm: LM, questions: list[str], max_new_tokens: int = 128) -> list[str]:
    """The model's answers without any sources: what it knows by itself."""
    return lm.chat(questions, max_new_tokens, CLOSED_BOOK_SYSTEM)
