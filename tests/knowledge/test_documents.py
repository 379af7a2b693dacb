"""Documents and chunks: every chunk is the exact source text at its span, Chinese included."""

import pytest

from lmforge.errors import ConfigError
from lmforge.knowledge.chunking import ChunkingConfig, chunk_document, unit_spans
from lmforge.knowledge.documents import load_document, load_documents, rst_headings
from lmforge.knowledge.lexical import terms

from .helpers import write_corpus


def test_chunk_spans_map_back_to_the_exact_source_text(tmp_path):
    root = write_corpus(tmp_path / "docs")
    for strategy in ("tokens", "headings"):
        for name in ("guide.md", "faq.rst", "zh.txt"):
            doc = load_document(root / name)
            source = (root / name).read_text(encoding="utf-8")
            lines = source.splitlines()
            chunks = chunk_document(doc, ChunkingConfig(strategy=strategy, size=8, overlap=2))
            assert chunks
            for c in chunks:
                assert source[c.start : c.end] == c.text
                assert c.text in "\n".join(lines[c.line_start - 1 : c.line_end])
                assert c.text.count("\n") == c.line_end - c.line_start
                assert source.count("\n", 0, c.start) + 1 == c.line_start


def test_windows_overlap_by_the_configured_units():
    from lmforge.knowledge.documents import Document

    doc = Document("x.txt", "one two three four five six seven", "x", "text")
    chunks = chunk_document(doc, ChunkingConfig(strategy="tokens", size=3, overlap=1))
    assert [c.text for c in chunks] == ["one two three", "three four five", "five six seven"]


def test_chinese_units_are_characters_and_terms_are_bigrams():
    assert len(unit_spans("长城位于中国")) == 6
    assert len(unit_spans("pip install 包")) == 3
    assert terms("长城 The Great Wall") == ["长城", "长", "城", "great", "wall"]
    doc_terms = terms("长城位于中国北方")
    assert "中国" in doc_terms and "城位" in doc_terms


def test_headings_split_sections_and_keep_their_titles(tmp_path):
    root = write_corpus(tmp_path / "docs")
    chunks = chunk_document(load_document(root / "faq.rst"), ChunkingConfig(size=100, overlap=0))
    assert [c.section for c in chunks] == ["FAQ", "Why is the sky blue?", "What is BM25?"]
    assert chunks[1].line_start == 4 and chunks[1].text.startswith("Why is the sky blue?")
    md = chunk_document(load_document(root / "guide.md"), ChunkingConfig(size=100, overlap=0))
    assert [c.section for c in md] == ["Install guide", "Quick start"]
    assert load_document(root / "guide.md").title == "Install guide"


def test_rst_heading_levels_follow_first_appearance():
    text = "Title\n=====\n\n- a\n-\n\nsub section\n-----------\n\nBee\n===\n"
    found = [(level, title) for _, level, title in rst_headings(text)]
    assert found == [(1, "Title"), (2, "sub section"), (1, "Bee")]  # "-" alone is no underline


def test_html_and_pdf(tmp_path):
    html = tmp_path / "page.html"
    html.write_text(
        "<html><head><title>Page T</title><style>x{}</style></head><body>"
        "<h1>Head</h1><p>First &amp; para.</p><script>no()</script><p>Second</p></body></html>"
    )
    doc = load_document(html)
    assert doc.title == "Page T" and doc.text == "# Head\n\nFirst & para.\n\nSecond\n"
    pypdf = pytest.importorskip("pypdf")
    writer = pypdf.PdfWriter()
    writer.add_blank_page(72, 72)
    writer.add_metadata({"/Title": "Blank"})
    with open(tmp_path / "blank.pdf", "wb") as f:
        writer.write(f)
    loaded = load_documents([tmp_path / "blank.pdf"])
    assert loaded.documents == [] and loaded.skipped[0][1] == "no text"


def test_bad_files_are_skipped_and_listed(tmp_path):
    root = write_corpus(tmp_path / "docs")
    (root / "image.txt").write_bytes(b"\x89PNG\x00\x00binary")
    (root / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (root / "data.bin").write_bytes(b"x")
    result = load_documents([root, tmp_path / "missing"])
    assert sorted(d.source.rsplit("/", 1)[1] for d in result.documents) == [
        "faq.rst", "guide.md", "zh.txt"
    ]  # fmt: skip
    reasons = {p.rsplit("/", 1)[1]: why for p, why in result.skipped}
    assert reasons["image.txt"] == "binary file (NUL bytes)"
    assert reasons["latin1.md"] == "not UTF-8 text (byte 3)"
    assert reasons["broken.pdf"].startswith("not a readable PDF")
    assert reasons["data.bin"].startswith("unsupported file type")
    assert reasons["missing"] == "no such file or folder"


def test_chunking_config_is_checked():
    with pytest.raises(ConfigError, match="overlap"):
        ChunkingConfig(size=4, overlap=4).validate()
    with pytest.raises(ConfigError, match="strategy"):
        ChunkingConfig(strategy="pages").validate()
