"""The search tool over a knowledge index (lmforge.knowledge), in English and Chinese."""

from __future__ import annotations

import pytest

from lmforge.errors import ConfigError
from lmforge.knowledge.index import KnowledgeIndex
from lmforge.knowledge.retrieve import RetrievalConfig, Retriever
from lmforge.tools import (
    BUILTIN_TOOLS,
    Toolbox,
    ToolCall,
    ToolsConfig,
    index_search,
    retrieval_tool,
)
from tests.knowledge.helpers import CountingEmbedder, write_corpus


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    index = KnowledgeIndex.create(root / "index", embedder=CountingEmbedder())
    index.add([write_corpus(root / "docs")])
    return root / "index"


def test_search_returns_numbered_passages_as_rag_cites_them(index_dir):
    index = KnowledgeIndex.open(index_dir, embedder=CountingEmbedder())
    box = Toolbox([retrieval_tool(Retriever(index, RetrievalConfig(mode="bm25", k=1)))])
    result = box.call(ToolCall("search", {"query": "Rayleigh scattering blue"}))
    assert result.error is False
    assert result.content == (
        "[1] FAQ › Why is the sky blue?\nWhy is the sky blue?\n--------------------\n\n"
        "Rayleigh scattering makes short blue wavelengths scatter more than red ones."
    )
    chinese = box.call(ToolCall("search", {"query": "长城在哪里"})).content
    assert chinese.startswith("[1] zh\n") and "长城位于中国北方。" in chinese


def test_the_builtin_search_opens_the_index_by_path(index_dir):
    cfg = ToolsConfig(["search"], index=str(index_dir), search_mode="bm25", search_k=2)
    tool = BUILTIN_TOOLS.get("search")(cfg)
    assert tool.parameters["required"] == ["query"]
    text = Toolbox([tool]).call(ToolCall("search", {"query": "pip install lmforge"})).content
    assert text.startswith("[1] Install guide") and "\n\n[2] " in text
    assert Toolbox([tool]).call(ToolCall("search", {"query": "zzz"})).content == "no passage found"


def test_search_needs_an_index_and_a_mode_without_an_lm(index_dir):
    with pytest.raises(ConfigError, match="needs a knowledge index") as e:
        index_search("")
    assert "pass index=runs/index" in str(e.value)
    with pytest.raises(ConfigError, match="search mode 'loglik' is unknown"):
        index_search(index_dir, mode="loglik")
