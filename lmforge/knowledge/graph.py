"""GraphRAG (Edge et al., 2024): an entity graph over the chunks, its communities, summaries.

    chunks ─► EXTRACTORS: (head, relation, tail) triples per chunk
                 lm     the LM lists "entity | relation | entity" lines
                 rules  capitalised names (and 《》「」“” quotes), a relation between two names
                        in one sentence: the words between them when few, else "co-occurs with"
           ─► networkx graph: node = entity (the chunks that mention it), edge weight = how
              often two entities are related
           ─► Louvain communities (Blondel et al., 2008; networkx, fixed seed)
           ─► one summary per community: the LM's, or the community's facts listed

    global question ─► the community summaries most relevant to it (BM25) are the sources
    local question  ─► entities named in it + their neighbours: the facts between them and
                       the chunks that mention them most are the sources

The graph is saved as JSON beside the index version it was built from (graph.json).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_json
from lmforge.errors import ConfigError
from lmforge.knowledge.chunking import Chunk
from lmforge.knowledge.index import KnowledgeIndex
from lmforge.knowledge.lexical import BM25, STOP_WORDS
from lmforge.knowledge.lm import LM
from lmforge.knowledge.rag import RAG, Answer, RAGConfig
from lmforge.knowledge.retrieve import Hit
from lmforge.registry import Registry
from lmforge.text_metrics import CJK

Triple = tuple[str, str, str]
_NAME = re.compile(r"\b[A-Z][\w]*(?:[ \t]+[A-Z][\w]*)*|[《「“]([^》」”]{1,20})[》」”]")
_SENTENCE = re.compile(r"[^.!?。！？]+[.!?。！？]?")
_CJK = re.compile(f"[{CJK}]")

EXTRACTORS: Registry[Callable[[LM | None, list[Chunk]], list[list[Triple]]]] = Registry(
    "entity extractor"
)


def names(sentence: str) -> list[tuple[int, int, str]]:
    """(start, end, name) of the capitalised names and quoted terms in a sentence."""
    found = []
    for m in _NAME.finditer(sentence):
        text = m.group(1) or m.group(0)
        words = text.split()
        while words and words[0].lower() in STOP_WORDS:  # "The Python" → "Python"
            words.pop(0)
        if words and (len(words) > 1 or len(words[0]) > 1 or _CJK.search(words[0])):
            found.append((m.start(), m.end(), " ".join(words)))
    return found


@EXTRACTORS.register("rules")
def extract_rules(lm: LM | None, chunks: list[Chunk]) -> list[list[Triple]]:
    out = []
    for chunk in chunks:
        triples = []
        for sentence in _SENTENCE.findall(chunk.text):
            found = names(sentence)
            for i, (_, end_a, a) in enumerate(found):
                for start_b, _, b in found[i + 1 :]:
                    between = sentence[end_a:start_b].strip(" ,;:")
                    short = 0 < len(between.split()) <= 4 and not _CJK.search(between)
                    if a != b:
                        triples.append((a, between if short else "co-occurs with", b))
        out.append(triples)
    return out


EXTRACT_PROMPT = (
    "List the entities in the text and how they are related, one fact per line as\n"
    "entity | relation | entity\n\nText:\n{text}"
)


@EXTRACTORS.register("lm")
def extract_lm(lm: LM | None, chunks: list[Chunk]) -> list[list[Triple]]:
    if lm is None:
        raise ConfigError("the lm extractor needs a language model; pass lm=")
    replies = lm.chat([EXTRACT_PROMPT.format(text=c.text) for c in chunks], 96)
    out = []
    for reply in replies:
        triples = []
        for line in reply.splitlines():
            parts = [p.strip(" -*•\t") for p in line.split("|")]
            if len(parts) == 3 and parts[0] and parts[2] and parts[0] != parts[2]:
                triples.append((parts[0], parts[1] or "related to", parts[2]))
        out.append(triples)
    return out


@dataclass
class KnowledgeGraph:
    nodes: dict[str, list[str]]  # entity → ids of the chunks that mention it
    edges: dict[tuple[str, str], dict[str, Any]]  # (a, b) sorted → {weight, relations}
    communities: list[list[str]]  # entities per community, largest first
    summaries: list[str]  # one per community

    @classmethod
    def build(cls, chunks: list[Chunk], triples: list[list[Triple]], seed: int = 0):
        import networkx as nx

        nodes: dict[str, list[str]] = {}
        edges: dict[tuple[str, str], dict[str, Any]] = {}
        for chunk, found in zip(chunks, triples):
            for head, relation, tail in found:
                for entity in (head, tail):
                    ids = nodes.setdefault(entity, [])
                    if chunk.id not in ids:
                        ids.append(chunk.id)
                edge = edges.setdefault(tuple(sorted((head, tail))), {"weight": 0, "facts": []})
                edge["weight"] += 1
                fact = f"{head} {relation} {tail}"
                if fact not in edge["facts"]:
                    edge["facts"].append(fact)
        graph = nx.Graph()
        graph.add_nodes_from(nodes)
        graph.add_weighted_edges_from((a, b, e["weight"]) for (a, b), e in edges.items())
        found = nx.community.louvain_communities(graph, weight="weight", seed=seed)
        communities = sorted((sorted(c) for c in found), key=lambda c: (-len(c), c))
        return cls(nodes, edges, communities, [])

    def facts(self, entities: set[str]) -> list[str]:
        """Facts between entities of the set, heaviest edges first."""
        inside = [e for (a, b), e in self.edges.items() if a in entities and b in entities]
        return [f for e in sorted(inside, key=lambda e: -e["weight"]) for f in e["facts"]]

    def neighbours(self, entities: set[str]) -> set[str]:
        out = set(entities)
        for a, b in self.edges:
            if a in entities or b in entities:
                out.update((a, b))
        return out

    def save(self, path: Path) -> None:
        edges = [{"a": a, "b": b, **e} for (a, b), e in self.edges.items()]
        data = {"nodes": self.nodes, "edges": edges, "communities": self.communities,
                "summaries": self.summaries}  # fmt: skip
        atomic_write_json(path, data)

    @classmethod
    def load(cls, path: Path) -> KnowledgeGraph:
        data = json.loads(path.read_text(encoding="utf-8"))
        edges = {(e["a"], e["b"]): {"weight": e["weight"], "facts": e["facts"]}
                 for e in data["edges"]}  # fmt: skip
        return cls(data["nodes"], edges, data["communities"], data["summaries"])


SUMMARY_PROMPT = "Summarise in two sentences what these facts say.\n\nFacts:\n{facts}"


def summarise(
    graph: KnowledgeGraph, lm: LM | None, limit: int = 20, max_facts: int = 20
) -> list[str]:
    """One summary per community: its entities and facts listed, preceded by the LM's
    summary for the `limit` largest communities."""
    listed = []
    for members in graph.communities:
        facts = graph.facts(set(members))[:max_facts]
        listed.append("Entities: " + ", ".join(members[:30]) + ".\nFacts: " + "; ".join(facts))
    if lm is None or limit <= 0:
        return listed
    replies = lm.chat([SUMMARY_PROMPT.format(facts=text) for text in listed[:limit]], 96)
    return [f"{reply}\n{text}" for reply, text in zip(replies, listed)] + listed[limit:]


def _pseudo_chunk(key: str, title: str, text: str) -> Chunk:
    return Chunk(key, f"graph:{key}", title, "", 0, len(text), 1, text.count("\n") + 1, text)


GraphSearch = Callable[["GraphRAG", str, int], list[Hit]]
GRAPH_MODES: Registry[GraphSearch] = Registry("GraphRAG mode")


@GRAPH_MODES.register("global")
def global_sources(g: GraphRAG, question: str, k: int) -> list[Hit]:
    """The community summaries that match the question best (BM25 over the summaries)."""
    found = BM25.build(g.graph.summaries).search(question, k) or [(0, 0.0)]
    return [
        Hit(_pseudo_chunk(f"community-{i + 1}", f"community {i + 1}", g.graph.summaries[i]), s)
        for i, s in found
        if i < len(g.graph.summaries)
    ]


def mentioned(graph: KnowledgeGraph, question: str) -> set[str]:
    lowered = question.lower()
    return {e for e in graph.nodes if len(e) > 1 and e.lower() in lowered}


@GRAPH_MODES.register("local")
def local_sources(g: GraphRAG, question: str, k: int) -> list[Hit]:
    """Facts around the entities the question names, then the chunks that mention them."""
    entities = mentioned(g.graph, question)
    if not entities:  # no entity named: start from the entities of the best BM25 chunks
        for i, _ in g.index.search_bm25(question, 2):
            entities |= {e for e, ids in g.graph.nodes.items() if g.index.chunks[i].id in ids}
    around = g.graph.neighbours(entities)
    facts = g.graph.facts(around)[:30]
    hits = [Hit(_pseudo_chunk("facts", "facts", "\n".join(facts)), 1.0)] if facts else []
    counts = Counter(cid for e in around for cid in g.graph.nodes.get(e, []))
    by_id = {c.id: c for c in g.index.chunks}
    hits += [Hit(by_id[cid], float(n)) for cid, n in counts.most_common(k) if cid in by_id]
    return hits[:k]


class GraphRAG:
    """Answer global questions from community summaries, local ones from neighbourhoods."""

    FILE = "graph.json"

    def __init__(self, index: KnowledgeIndex, lm: LM, graph: KnowledgeGraph) -> None:
        self.index, self.lm, self.graph = index, lm, graph

    @classmethod
    def for_index(
        cls, index: KnowledgeIndex, lm: LM, extractor: str = "rules", summaries: int = 20
    ) -> GraphRAG:
        """The graph saved with the index's current version, built (and saved) if absent."""
        path = index.root / f"v{index.version:06d}" / cls.FILE
        if path.exists():
            return cls(index, lm, KnowledgeGraph.load(path))
        triples = EXTRACTORS.get(extractor)(lm, index.chunks)
        graph = KnowledgeGraph.build(index.chunks, triples)
        graph.summaries = summarise(graph, lm, summaries)
        graph.save(path)
        return cls(index, lm, graph)

    def sources(self, question: str, mode: str, k: int = 5) -> list[Hit]:
        return GRAPH_MODES.get(mode)(self, question, k)

    def ask(self, question: str, mode: str = "global", max_new_tokens: int = 128) -> Answer:
        rag = RAG(self.index, self.lm, RAGConfig(max_new_tokens=max_new_tokens))
        return rag.ask(question, self.sources(question, mode))
