"""Knowledge enhancement: documents, chunks, a persistent index, retrieval-augmented generation,
GraphRAG, RAG evaluation, kNN-LM, answer verification and knowledge modules."""

from lmforge.knowledge.chunking import Chunk, ChunkingConfig, chunk_document
from lmforge.knowledge.documents import Document, LoadResult, load_document, load_documents
from lmforge.knowledge.index import IndexConfig, KnowledgeIndex, UpdateReport
from lmforge.knowledge.lexical import terms
from lmforge.knowledge.module import KnowledgeModule, KnowledgeModuleConfig
from lmforge.knowledge.store import STORES, FaissStore, QdrantStore, VectorStore

__all__ = [
    "STORES",
    "Chunk",
    "ChunkingConfig",
    "Document",
    "FaissStore",
    "IndexConfig",
    "KnowledgeIndex",
    "KnowledgeModule",
    "KnowledgeModuleConfig",
    "LoadResult",
    "QdrantStore",
    "UpdateReport",
    "VectorStore",
    "chunk_document",
    "load_document",
    "load_documents",
    "terms",
]
