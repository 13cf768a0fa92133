"""Public tests for homework 1. Run them with `pytest test_public.py` next to your hw1.py (needs torch, regex).

BPE is checked against the slow, by-definition trainer and encoder written out below (recount every pair after
each merge) and against the merges shipped in data/corpus_merges.json; RoPE against a complex-number definition
in float64; embedding against torch's built-in. The autograder also runs hidden tests (ties, unicode, edge
cases, overlapping special tokens, shuffled vocabularies, invalid UTF-8, chunks cut anywhere, other positions
and dtypes, gradients, inputs left unmodified), so passing here is necessary, not sufficient.
"""

import json
import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import regex
import torch
import torch.nn.functional as F
from hw1 import decode, embedding, encode, encode_iterable, rope, train_bpe

DATA = Path(__file__).parent / "data"
EOT = "<|endoftext|>"
# GPT-2's pre-tokenizer (the same as in hw1.py).
PRETOKEN_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# -- BPE by definition: slow and simple ----------------------------------------------------------------------------


def split_on_special_tokens(text, special_tokens):
    """[(piece, is_special), ...]; the longest special token wins where several match at one place."""
    if not special_tokens:
        return [(text, False)]
    tokens = sorted(set(special_tokens), key=len, reverse=True)
    pieces = re.split("(" + "|".join(re.escape(token) for token in tokens) + ")", text)
    return [(piece, index % 2 == 1) for index, piece in enumerate(pieces)]


def merge_pair(parts, pair):
    merged, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            merged.append(parts[i] + parts[i + 1])
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return tuple(merged)


def definition_train(text, vocab_size, special_tokens):
    specials = list(dict.fromkeys(special_tokens))
    vocab = [bytes([byte]) for byte in range(256)] + [token.encode("utf-8") for token in specials]
    words = Counter()
    for piece, is_special in split_on_special_tokens(text, specials):
        if not is_special:
            for pretoken in regex.findall(PRETOKEN_PATTERN, piece):
                words[tuple(bytes([byte]) for byte in pretoken.encode("utf-8"))] += 1
    merges = []
    while len(vocab) < vocab_size:
        counts = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                counts[pair] += count
        if not counts:
            break
        best = max(counts, key=lambda pair: (counts[pair], pair))  # ties: the greater (left, right)
        merges.append(best)
        vocab.append(best[0] + best[1])
        merged_words = Counter()
        for word, count in words.items():
            merged_words[merge_pair(word, best)] += count
        words = merged_words
    return vocab, merges


def definition_encode(vocab, merges, special_tokens, text):
    id_of = {}
    for token_id in reversed(range(len(vocab))):
        id_of[vocab[token_id]] = token_id
    rank = {}
    for index, (left, right) in enumerate(merges):
        rank.setdefault((left, right), index)
    ids = []
    for piece, is_special in split_on_special_tokens(text, special_tokens):
        if is_special:
            ids.append(id_of[piece.encode("utf-8")])
            continue
        for pretoken in regex.findall(PRETOKEN_PATTERN, piece):
            parts = tuple(bytes([byte]) for byte in pretoken.encode("utf-8"))
            while True:
                ranked = [(rank[pair], pair) for pair in pairwise(parts) if pair in rank]
                if not ranked:
                    break
                parts = merge_pair(parts, min(ranked)[1])
            ids.extend(id_of[part] for part in parts)
    return ids


def as_pairs(merges):
    return [tuple(merge) for merge in merges]


@pytest.fixture(scope="module")
def corpus():
    return (DATA / "corpus.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shipped():
    """The merges the course's reference learned on data/corpus.txt, and their vocabulary."""
    document = json.loads((DATA / "corpus_merges.json").read_text(encoding="utf-8"))
    merges = [(bytes.fromhex(left), bytes.fromhex(right)) for left, right in document["merges"]]
    specials = document["special_tokens"]
    vocab = [bytes([byte]) for byte in range(256)] + [token.encode("utf-8") for token in specials]
    vocab += [left + right for left, right in merges]
    return document["vocab_size"], specials, vocab, merges


# -- train_bpe -------------------------------------------------------------------------------------------------------

HAND_EXAMPLE = (
    "low low low low low lower lower widest widest widest newest newest newest newest newest newest"
)


def test_train_bpe_hand_example():
    vocab, merges = train_bpe(HAND_EXAMPLE, 256 + 6, [])
    # "st" and "es" both occur 9 times: the greater pair (b"s", b"t") goes first.
    assert as_pairs(merges) == [
        (b"s", b"t"),
        (b"e", b"st"),
        (b"o", b"w"),
        (b"l", b"ow"),
        (b"w", b"est"),
        (b"n", b"e"),
    ]
    assert list(vocab[256:]) == [b"st", b"est", b"ow", b"low", b"west", b"ne"]


@pytest.mark.parametrize(
    ("start", "chars", "vocab_size", "special_tokens"),
    [(0, 3_000, 300, []), (10_000, 5_000, 320, [EOT]), (50_000, 4_000, 300, [EOT, "<pad>"])],
)
def test_train_bpe_matches_definition(corpus, start, chars, vocab_size, special_tokens):
    text = corpus[start : start + chars]
    vocab, merges = train_bpe(text, vocab_size, special_tokens)
    expected_vocab, expected_merges = definition_train(text, vocab_size, special_tokens)
    assert as_pairs(merges) == expected_merges
    assert list(vocab) == expected_vocab


def test_train_bpe_special_token_layout():
    text = f"hello world{EOT}hello there<pad>hello"
    vocab, merges = train_bpe(text, 270, [EOT, "<pad>"])
    assert vocab[:256] == [bytes([byte]) for byte in range(256)]
    assert vocab[256:258] == [EOT.encode(), b"<pad>"]
    for left, right in as_pairs(merges):
        assert b"<" not in left + right and b">" not in left + right  # nothing merged into a special token


def test_train_bpe_on_the_shipped_corpus(corpus, shipped):
    vocab_size, specials, expected_vocab, expected_merges = shipped
    vocab, merges = train_bpe(corpus, vocab_size, specials)
    assert as_pairs(merges) == expected_merges
    assert list(vocab) == expected_vocab


# -- encode, decode, encode_iterable -------------------------------------------------------------------------

SAMPLES = [
    "Hello, world! It's 2027.",
    f"hello{EOT}world{EOT}{EOT} and more",
    "  spaces   and\ttabs\n\nnew lines ",
    "naïve café, 東京 🙂",
    "",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_matches_definition(shipped, text):
    _, specials, vocab, merges = shipped
    ids = encode(vocab, merges, specials, text)
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and ids.dim() == 1
    assert ids.tolist() == definition_encode(vocab, merges, specials, text)


def test_encode_held_out_text(corpus, shipped):
    _, specials, vocab, merges = shipped
    text = corpus[-6_000:]
    assert encode(vocab, merges, specials, text).tolist() == definition_encode(vocab, merges, specials, text)


def test_special_token_is_one_id(shipped):
    _, specials, vocab, merges = shipped
    ids = encode(vocab, merges, specials, f"a{EOT}b").tolist()
    assert ids == [ord("a"), 256, ord("b")]
    # Without special tokens it is ordinary text.
    assert 256 not in encode(vocab, merges, [], f"a{EOT}b").tolist()


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_roundtrip(shipped, text):
    _, specials, vocab, merges = shipped
    ids = torch.tensor(definition_encode(vocab, merges, specials, text), dtype=torch.int64)
    assert decode(vocab, ids) == text


def test_encode_iterable_of_lines(corpus, shipped):
    _, specials, vocab, merges = shipped
    text = corpus[:8_000]
    ids = encode_iterable(vocab, merges, specials, text.splitlines(keepends=True))
    assert ids.tolist() == definition_encode(vocab, merges, specials, text)


# -- rope ----------------------------------------------------------------------------------------------------------


def definition_rope(x, positions, theta=10000.0, ntk_scale=None):
    """Each feature pair as one complex number, multiplied by exp(1j * m * theta**(-2i/D)); in float64."""
    B, T, H, D = x.shape
    if ntk_scale is not None:
        theta = theta * ntk_scale ** (D / (D - 2))
    i = torch.arange(D // 2, dtype=torch.float64)
    angles = positions.to(torch.float64)[..., None] * theta ** (-2 * i / D)  # (T, D/2) or (B, T, D/2)
    rotation = torch.polar(torch.ones_like(angles), angles).reshape(-1, T, 1, D // 2)
    pairs = torch.view_as_complex(x.to(torch.float64).reshape(B, T, H, D // 2, 2).contiguous())
    return torch.view_as_real(pairs * rotation).reshape(B, T, H, D).to(x.dtype)


def assert_close(actual, expected, *, rtol=1e-6, atol=1e-6):
    """Same type, shape and dtype, and |actual - expected| <= atol + rtol * |expected| everywhere."""
    assert isinstance(actual, torch.Tensor), f"expected a torch.Tensor, got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype}, expected {expected.dtype}"
    error = (actual.double() - expected.double()).abs()
    allowed = atol + rtol * expected.double().abs()
    assert bool((error <= allowed).all()), (
        f"largest error {float(error.max()):.3g} (atol={atol:g}, rtol={rtol:g})"
    )


def rope_tolerance(x, positions):
    """float32 angles m * theta**(-2i/D) lose about 2e-7 * m of their precision."""
    return {"rtol": 1e-5, "atol": 1e-5 + 2e-7 * int(positions.max()) * float(x.abs().max())}


@pytest.mark.parametrize("shape", [(1, 8, 2, 16), (2, 16, 4, 64), (3, 5, 1, 2)])
def test_rope_matches_definition(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(shape[1])
    assert_close(rope(x, positions), definition_rope(x, positions), **rope_tolerance(x, positions))


@pytest.mark.parametrize(("theta", "ntk_scale"), [(10000.0, 2.0), (10000.0, 4.0), (500000.0, 8.0)])
def test_rope_ntk_scaling(theta, ntk_scale):
    x = torch.randn(2, 24, 2, 64, generator=torch.Generator().manual_seed(1))
    positions = torch.arange(24) * 10
    expected = definition_rope(x, positions, theta, ntk_scale)
    got = rope(x, positions, theta=theta, ntk_scale=ntk_scale)
    assert_close(got, expected, **rope_tolerance(x, positions))


def test_rope_keeps_relative_positions():
    """What RoPE is for: a query-key score depends only on the distance between their positions."""
    q = torch.randn(1, 1, 1, 32, generator=torch.Generator().manual_seed(2))
    k = torch.randn(1, 1, 1, 32, generator=torch.Generator().manual_seed(3))
    scores = [
        (rope(q, torch.tensor([m + 7])) * rope(k, torch.tensor([m]))).sum().item() for m in (0, 5, 40, 300)
    ]
    assert max(scores) - min(scores) < 1e-3


# -- embedding -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vocab_size", "dim", "ids_shape"), [(50, 8, (4, 7)), (1000, 32, (13,)), (7, 4, (2, 3, 5))]
)
def test_embedding_forward(vocab_size, dim, ids_shape):
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(vocab_size, dim, generator=generator)
    ids = torch.randint(0, vocab_size, ids_shape, generator=generator)
    assert_close(embedding(ids, weight), F.embedding(ids, weight))


def test_embedding_gradient_sums_repeated_ids():
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(10, 4, generator=generator, requires_grad=True)
    ids = torch.tensor([[1, 3, 1], [3, 3, 9]])
    grad_output = torch.randn(2, 3, 4, generator=generator)
    embedding(ids, weight).backward(grad_output)
    expected = torch.zeros(10, 4).index_add_(0, ids.reshape(-1), grad_output.reshape(-1, 4))
    assert_close(weight.grad, expected, rtol=1e-5, atol=1e-5)
