"""GraphRAG on a tiny hand-made corpus: two planted communities, found by Louvain."""

from lmforge.knowledge.chunking import ChunkingConfig
from lmforge.knowledge.graph import (
    GraphRAG,
    KnowledgeGraph,
    extract_rules,
    global_sources,
    local_sources,
    names,
)
from lmforge.knowledge.index import IndexConfig, KnowledgeIndex

from .helpers import CountingEmbedder, write_corpus

PLANTED = {
    "team.txt": (
        "Alice Smith works with Bob Jones. Bob Jones works with Carol King. "
        "Carol King mentors Alice Smith. Alice Smith and Dan Brown share an office. "
        "Dan Brown works with Carol King.\n"
    ),
    "chess.txt": (
        "Xavier Lee plays chess with Yvonne Ray. Yvonne Ray coaches Zed Park. "
        "Zed Park beat Xavier Lee. Wanda Cole plays chess with Zed Park. "
        "Wanda Cole and Yvonne Ray run the Chess Club.\n"
    ),
    "bridge.txt": "Dan Brown once met Wanda Cole.\n",
}


def graph_rag(tmp_path, lm):
    docs = write_corpus(tmp_path / "docs", PLANTED)
    config = IndexConfig(chunking=ChunkingConfig(size=200, overlap=0))
    index = KnowledgeIndex.create(tmp_path / "index", config, CountingEmbedder())
    index.add([docs])
    return GraphRAG.for_index(index, lm, extractor="rules", summaries=0)


def test_names_and_rule_triples():
    assert [n for *_, n in names("The Python Software Foundation met Guido.")] == [
        "Python Software Foundation", "Guido"
    ]  # fmt: skip
    assert [n for *_, n in names("他读了《红楼梦》和「三国演义」。")] == ["红楼梦", "三国演义"]
    from lmforge.knowledge.chunking import Chunk

    chunk = Chunk("c", "s", "t", "", 0, 0, 1, 1, "Alice Smith works with Bob Jones today.")
    assert extract_rules(None, [chunk]) == [[("Alice Smith", "works with", "Bob Jones")]]


def test_louvain_finds_the_planted_communities(tmp_path, tiny_lm):
    g = graph_rag(tmp_path, tiny_lm).graph
    assert g.communities == [  # largest first
        ["Chess Club", "Wanda Cole", "Xavier Lee", "Yvonne Ray", "Zed Park"],
        ["Alice Smith", "Bob Jones", "Carol King", "Dan Brown"],
    ]
    assert g.edges[("Alice Smith", "Bob Jones")] == {
        "weight": 1, "facts": ["Alice Smith works with Bob Jones"]
    }  # fmt: skip
    assert g.summaries[0].startswith("Entities: Chess Club, Wanda Cole")


def test_graph_is_saved_with_the_index_version_and_reloaded(tmp_path, tiny_lm):
    first = graph_rag(tmp_path, tiny_lm)
    path = tmp_path / "index" / "v000001" / "graph.json"
    again = KnowledgeGraph.load(path)
    assert again == first.graph
    assert GraphRAG.for_index(first.index, tiny_lm).graph == first.graph


def test_global_and_local_sources(tmp_path, tiny_lm):
    g = graph_rag(tmp_path, tiny_lm)
    top = global_sources(g, "Who plays chess?", 1)
    assert top[0].chunk.source == "graph:community-1"
    local = local_sources(g, "Who does Xavier Lee play with?", 3)
    assert local[0].chunk.title == "facts"
    assert "Xavier Lee plays chess with Yvonne Ray" in local[0].chunk.text
    assert "Alice Smith" not in local[0].chunk.text
    assert local[1].chunk.source.endswith("chess.txt")
    answer = g.ask("Who plays chess?", "global", max_new_tokens=4)
    assert answer.sources[0].chunk.source == "graph:community-1"
