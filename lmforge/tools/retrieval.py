"""A retrieval tool: the agent searches a knowledge index (lmforge.knowledge) by itself.

    search(query) ─► Retriever.retrieve (bm25 | dense | hybrid, k hits)
                  ─► "[1] title › section\\n passage" blocks, numbered as RAG numbers its sources

The index is opened read-only; nothing the model writes reaches it but the query text.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.knowledge.index import KnowledgeIndex
from lmforge.knowledge.rag import source_block
from lmforge.knowledge.retrieve import RetrievalConfig, Retriever
from lmforge.tools.registry import Tool

NO_LM_MODES = ("bm25", "dense", "hybrid")  # the modes a tool can run without its own LM


def retrieval_tool(retriever: Retriever, name: str = "search") -> Tool:
    """A tool that returns the passages `retriever` finds for a query, numbered and cited."""

    def search(query: str) -> str:
        """Search the knowledge base for passages relevant to a question.

        Args:
            query: what to look for, in a few words
        """
        hits = retriever.retrieve(query)
        if not hits:
            return "no passage found"
        return "\n\n".join(source_block(i + 1, hit) for i, hit in enumerate(hits))

    return Tool.from_function(search, name)


def index_search(path: str | Path, mode: str = "hybrid", k: int = 3) -> Tool:
    """The `search` tool over the index built by `lmforge rag index ... --out PATH`."""
    if not str(path):
        raise ConfigError(
            "the search tool needs a knowledge index",
            fix="build one with `lmforge rag index DOCS --out runs/index`, then pass "
            "{index=runs/index}",
        )
    if mode not in NO_LM_MODES:
        raise ConfigError(
            f"search mode {mode!r} is unknown", fix="choose {search_mode} from bm25, dense, hybrid"
        )
    config = RetrievalConfig(mode=mode, k=k, candidates=max(30, k))
    return retrieval_tool(Retriever(KnowledgeIndex.open(path), config))
