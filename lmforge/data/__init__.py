"""Data: pretraining text, instruction data and labelled examples.

read_documents / load_corpus ──► DocumentSet ──build_shards──► train.bin, val.bin
load_shards ──► PackedBatches (training, resumable)  +  ValidationBatches (evaluation)

Instruction data: instruct.py (formats, files), sft.py (chat template, loss mask, packing),
flan.py and self_instruct.py (building it); labelled examples: labelled.py, examples.py and
chinese_pos.py (a Chinese task).
"""

from lmforge.data.chinese_pos import CHINESE_WORDS, pos_examples  # registers peoples-daily-pos
from lmforge.data.corpora import CORPORA, load_corpus, strip_pos_tags
from lmforge.data.loader import Batch, BatchSource, PackedBatches, ValidationBatches
from lmforge.data.shards import (
    ShardInfo,
    build_shards,
    load_shards,
    source_fingerprint,
    split_point,
    split_points,
    token_dtype,
    unigram_entropy,
)
from lmforge.data.text import Document, DocumentSet, Skipped, read_documents, read_files

__all__ = [
    "CHINESE_WORDS",
    "CORPORA",
    "Batch",
    "BatchSource",
    "Document",
    "DocumentSet",
    "PackedBatches",
    "ShardInfo",
    "Skipped",
    "ValidationBatches",
    "build_shards",
    "load_corpus",
    "load_shards",
    "pos_examples",
    "read_documents",
    "read_files",
    "source_fingerprint",
    "split_point",
    "split_points",
    "strip_pos_tags",
    "token_dtype",
    "unigram_entropy",
]
