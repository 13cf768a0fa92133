"""Hidden tests of homework 1 (trusted side: never copied into the sandbox).

Expected values come from reference_impl: ``tokenizer.train_bpe`` and ``tokenizer.Tokenizer`` for BPE,
``model.precompute_freqs_cis`` and ``model.apply_rotary_emb`` for RoPE. Corpora are synthetic text
(reference_impl.data.synthetic_text) drawn from the secret run seed, so every run sees different ones, plus
hand-made strings for the edge cases.

The student's results cross the sandbox boundary as plain values (lists, bytes, str, tensors) and are checked
here field by field before anything is compared, so a malformed result fails its test with a message, never the
grader.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

import torch
import torch.nn.functional as F

from graders.harness import Case, Context, Suite, TestFailure
from reference_impl.data import synthetic_text
from reference_impl.model import apply_rotary_emb, precompute_freqs_cis
from reference_impl.tokenizer import Tokenizer
from reference_impl.tokenizer import train_bpe as reference_train_bpe

suite = Suite()

EOT = "<|endoftext|>"
# RoPE: angles are m * theta**(-2i/D) in float32, whose rounding grows with the position m. Implementations that
# compute them in float64 (or as theta**(-2i/D) vs exp(-2i/D * log(theta))) differ from the reference by about
# 2e-7 * m * |x|; the tolerance allows that and nothing close to a wrong rotation.
ROPE_ATOL = 1e-5
ROPE_ATOL_PER_POSITION = 2e-7
ROPE_RTOL = 1e-5
# Half-precision inputs, (rtol, atol): the float32 result rounded to the input's dtype, a unit or two in the last
# place either way.
ROPE_HALF = {torch.float16: (5e-3, 5e-3), torch.bfloat16: (2e-2, 2e-2)}
# Embedding is a gather: exact, but one-hot matrix products are accepted (they add zeros in float32).
EMBEDDING_TOL = {"rtol": 1e-6, "atol": 1e-6}
# Gradients sum grad_output rows per id; the order of a sum may differ.
EMBEDDING_GRAD_TOL = {"rtol": 1e-5, "atol": 1e-5}
# Shown characters of a mismatching token or text in messages of visible tests.
SHOWN_CHARS = 60


# -- the reference, in the interface's data layout ---------------------------------------------------------------


def reference_training(text: str, vocab_size: int, special_tokens: list[str]) -> list:
    """``[vocab, merges]`` as the reference learns them, in the layout the student's result arrives in (the
    protocol turns tuples into lists)."""
    with tempfile.TemporaryDirectory(prefix="hw1-bpe-") as directory:
        path = os.path.join(directory, "corpus.txt")
        with open(path, "wb") as file:
            file.write(text.encode("utf-8"))
        vocab, merges = reference_train_bpe(path, vocab_size, special_tokens, num_processes=1)
    return [[vocab[token_id] for token_id in range(len(vocab))], [[left, right] for left, right in merges]]


def reference_ids(vocab: list[bytes], merges: list, special_tokens: list[str], text: str) -> torch.Tensor:
    tokenizer = Tokenizer(dict(enumerate(vocab)), [tuple(merge) for merge in merges], special_tokens)
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)


def reference_text(vocab: list[bytes], ids: torch.Tensor) -> str:
    return Tokenizer(dict(enumerate(vocab)), []).decode(ids.tolist())


def reference_rope(
    x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0, ntk_scale: float | None = None
) -> torch.Tensor:
    table = precompute_freqs_cis(x.shape[-1], int(positions.max()) + 1, theta, ntk_scale)
    rotated, _ = apply_rotary_emb(x, x, table[positions])
    return rotated


@functools.cache
def _trained(corpus_seed: int, n_chars: int, vocab_size: int, special_tokens: tuple[str, ...]) -> tuple:
    """A vocabulary for the encoding tests, trained once per grading process on a fixed synthetic corpus."""
    text = synthetic_text.generate_corpus(n_chars, seed=corpus_seed)
    vocab, merges = reference_training(text, vocab_size, list(special_tokens))
    return vocab, merges


def encoding_vocab(special_tokens: tuple[str, ...] = (EOT,)) -> tuple[list[bytes], list[list[bytes]]]:
    vocab, merges = _trained(11, 40_000, 600, special_tokens)
    return list(vocab), [list(merge) for merge in merges]


def hidden_corpus(ctx: Context, n_chars: int, *, lexicon_size: int = 5000) -> str:
    """Synthetic documents joined by <|endoftext|>, from the secret seed: different in every run."""
    return synthetic_text.generate_corpus(n_chars, seed=ctx.rng.randrange(2**32), lexicon_size=lexicon_size)


# -- checks of untrusted results ---------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return type(value).__name__


def _show(token: Any) -> str:
    text = repr(token)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _check_training(ctx: Context, got: Any, expected: list, what: str) -> None:
    """``got`` must be ``(vocab: list of bytes, merges: list of (bytes, bytes))`` equal to ``expected``."""
    if not isinstance(got, list) or len(got) != 2:
        ctx.fail(f"{what}: train_bpe must return a pair (vocab, merges), got a {_kind(got)}")
    vocab, merges = got
    expected_vocab, expected_merges = expected
    if not isinstance(merges, list):
        ctx.fail(f"{what}: merges must be a list of (bytes, bytes) pairs, got a {_kind(merges)}")
    for index, merge in enumerate(merges):
        if not (isinstance(merge, list) and len(merge) == 2 and all(type(part) is bytes for part in merge)):
            ctx.fail(f"{what}: merges[{index}] is not a pair of bytes (got a {_kind(merge)})")
    if not isinstance(vocab, list):
        ctx.fail(
            f"{what}: vocab must be a list of bytes, vocab[i] the bytes of token i; got a {_kind(vocab)}"
        )
    for token_id, token in enumerate(vocab):
        if type(token) is not bytes:
            ctx.fail(f"{what}: vocab[{token_id}] is a {_kind(token)}, expected bytes")
    for index, (merge, wanted) in enumerate(zip(merges, expected_merges, strict=False)):
        if merge != wanted:
            message = f"{what}: merge {index} (0-based) is not the expected one"
            if ctx.visible:
                message += f": got ({_show(merge[0])}, {_show(merge[1])}), expected ({_show(wanted[0])}, "
                message += f"{_show(wanted[1])})"
            elif index > 0:
                message += f" (the {index} merges before it match)"
            ctx.fail(message)
    if len(merges) != len(expected_merges):
        ctx.fail(
            f"{what}: learned {len(merges)} merges, expected {len(expected_merges)} (the first "
            f"{min(len(merges), len(expected_merges))} match)"
        )
    for token_id, (token, wanted) in enumerate(zip(vocab, expected_vocab, strict=False)):
        if token != wanted:
            message = f"{what}: the merges match but vocab[{token_id}] is not the expected token"
            if ctx.visible:
                message += f": got {_show(token)}, expected {_show(wanted)}"
            ctx.fail(message)
    if len(vocab) != len(expected_vocab):
        ctx.fail(f"{what}: the vocabulary has {len(vocab)} entries, expected {len(expected_vocab)}")


def _check_ids(ctx: Context, got: Any, expected: torch.Tensor, what: str) -> None:
    """``got`` must be an int64 tensor of shape (N,) equal to ``expected``."""
    if type(got) is not torch.Tensor:
        ctx.fail(f"{what}: the ids must be an int64 torch.Tensor of shape (N,), got a {_kind(got)}")
    if got.dtype != torch.int64 or got.dim() != 1:
        ctx.fail(
            f"{what}: the ids must be an int64 tensor of shape (N,), got {got.dtype} of shape {tuple(got.shape)}"
        )
    if got.device.type != "cpu":
        ctx.fail(f"{what}: the ids must be on the CPU, got {got.device}")
    shared = min(got.numel(), expected.numel())
    differ = (got[:shared] != expected[:shared]).nonzero()
    if differ.numel():
        first = int(differ[0, 0])
        message = f"{what}: token {first} (0-based) is not the expected id"
        if ctx.visible:
            message += f": got {int(got[first])}, expected {int(expected[first])}"
        ctx.fail(message + f" (the {first} tokens before it match)")
    if got.numel() != expected.numel():
        ctx.fail(f"{what}: got {got.numel()} ids, expected {expected.numel()} (the first {shared} match)")


def _check_text(ctx: Context, got: Any, expected: str, what: str) -> None:
    if type(got) is not str:
        ctx.fail(f"{what}: decode must return a str, got a {_kind(got)}")
    if got == expected:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    message = f"{what}: the text differs from the expected one at character {first} (0-based)"
    if ctx.visible:
        message += f": got {_show(got[first : first + 20])}, expected {_show(expected[first : first + 20])}"
    if len(got) != len(expected):
        message += f"; got {len(got)} characters, expected {len(expected)}"
    ctx.fail(message)


def _check_bpe(ctx: Context, text: str, vocab_size: int, special_tokens: list[str], what: str) -> None:
    got = ctx.call("train_bpe", text, vocab_size, special_tokens)
    _check_training(ctx, got, reference_training(text, vocab_size, special_tokens), what)


def _describe(text: str) -> str:
    return f"{len(text):,} characters" if len(text) > 40 else repr(text)


def _check_encode(
    ctx: Context, vocab: list[bytes], merges: list, special_tokens: list[str], text: str, what: str = ""
) -> None:
    label = what or f"encode of {_describe(text)} with special tokens {special_tokens}"
    got = ctx.call("encode", vocab, merges, special_tokens, text)
    _check_ids(ctx, got, reference_ids(vocab, merges, special_tokens, text), label)


def _check_encode_iterable(
    ctx: Context,
    vocab: list[bytes],
    merges: list,
    special_tokens: list[str],
    chunks: list[str],
    what: str,
    expected: torch.Tensor | None = None,
) -> None:
    """``expected``: the ids of the joined chunks, when the caller has them already."""
    if expected is None:
        expected = reference_ids(vocab, merges, special_tokens, "".join(chunks))
    got = ctx.call("encode_iterable", vocab, merges, special_tokens, chunks)
    _check_ids(ctx, got, expected, what)


def _check_rope(
    ctx: Context,
    x: torch.Tensor,
    positions: torch.Tensor,
    theta: float | None = None,
    ntk_scale: float | None = None,
) -> None:
    kwargs: dict[str, Any] = {}
    if theta is not None:
        kwargs["theta"] = theta
    if ntk_scale is not None:
        kwargs["ntk_scale"] = ntk_scale
    got = ctx.call("rope", x, positions, **kwargs)
    expected = reference_rope(x, positions, theta if theta is not None else 10000.0, ntk_scale)
    settings = ", ".join(f"{key}={value:g}" for key, value in kwargs.items())
    what = (
        f"rope of x {tuple(x.shape)} {x.dtype} at positions of shape {tuple(positions.shape)} "
        f"(up to {int(positions.max())}){', ' + settings if settings else ''}"
    )
    if x.dtype in ROPE_HALF:
        rtol, atol = ROPE_HALF[x.dtype]
    else:
        rtol = ROPE_RTOL
        atol = ROPE_ATOL + ROPE_ATOL_PER_POSITION * int(positions.max()) * float(x.abs().max())
    ctx.check_close(got, expected, rtol=rtol, atol=atol, what=what)


def _random_ids(ctx: Context, vocab_size: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, shape, generator=ctx.generator, dtype=torch.int64)


# -- BPE training --------------------------------------------------------------------------------------------------

HAND_EXAMPLE = (
    "low low low low low lower lower widest widest widest newest newest newest newest newest newest"
)


@suite.test("train_bpe_small")
def train_bpe_small(ctx: Context) -> None:
    _check_bpe(ctx, HAND_EXAMPLE, 256 + 12, [], "train_bpe of the low/lower/widest/newest example")
    text = hidden_corpus(ctx, 3_000, lexicon_size=300).replace(EOT, "\n")
    _check_bpe(
        ctx, text, 300, [], f"train_bpe of a synthetic corpus of {len(text):,} characters, vocab_size 300"
    )


@suite.test("train_bpe_special_tokens")
def train_bpe_special_tokens(ctx: Context) -> None:
    text = hidden_corpus(ctx, 8_000, lexicon_size=500)
    what = f"train_bpe of {len(text):,} characters of documents joined by {EOT}"
    _check_bpe(ctx, text, 350, [EOT], what)
    # Special tokens glued to words: no merge may reach into them or across them.
    glued = "".join(f"word{index % 7}<pad>{EOT}and<pad>more " for index in range(40))
    _check_bpe(ctx, glued, 300, [EOT, "<pad>"], "train_bpe with special tokens glued to words")


# Ties decided by the bytes of the pair, (left, right) compared as a tuple: (b"x", b"ab") beats (b"ab", b"c")
# although ab's id is larger, and (b"ab", b"c") beats (b"a", b"bc") although both spell "abc".
TIE_CORPORA = ["xab xab abc abc", "abc abc a bc ab c", "ab ab ba ba zz zz", "a bc ab c abc bcd cd cd bcd"]


@suite.test("train_bpe_ties")
def train_bpe_ties(ctx: Context) -> None:
    for text in TIE_CORPORA:
        _check_bpe(ctx, text, 280, [], f"train_bpe of {text!r} (equal pair counts)")
    # Random words over a small alphabet, each repeated the same number of times: ties at every step.
    letters = "abcdeÿz"
    for _ in range(3):
        words = {"".join(ctx.rng.choices(letters, k=ctx.rng.randint(2, 6))) for _ in range(30)}
        text = " ".join(sorted(words) * 3)
        _check_bpe(ctx, text, 400, [], f"train_bpe of {len(words)} words of equal counts (many ties)")


@suite.test("train_bpe_unicode")
def train_bpe_unicode(ctx: Context) -> None:
    pieces = [
        "東京",
        "大语言模型",
        "Москва",
        "Ελλάδα",
        "🙂",
        "👩‍👩‍👧",
        "e\u0301te\u0301",
        "naïve café",
        "नमस्ते",
    ]
    words = [ctx.rng.choice(pieces) for _ in range(400)]
    text = " ".join(words)
    _check_bpe(ctx, text, 400, [], f"train_bpe of {len(text):,} characters of non-Latin text")
    mixed = hidden_corpus(ctx, 6_000, lexicon_size=400)
    _check_bpe(
        ctx,
        mixed,
        330,
        [EOT, "<|\N{GREEK SMALL LETTER SIGMA}|>"],
        "train_bpe of synthetic text with accents and emoji",
    )


@suite.test("train_bpe_edge_cases")
def train_bpe_edge_cases(ctx: Context) -> None:
    _check_bpe(ctx, "", 300, [EOT], "train_bpe of the empty string")
    _check_bpe(ctx, "some text here", 257, [EOT], "train_bpe with vocab_size 257 (room for no merge)")
    _check_bpe(ctx, "aaaa aaaa", 400, [], "train_bpe of 'aaaa aaaa' (pairs run out before vocab_size)")
    _check_bpe(ctx, EOT * 5, 300, [EOT], "train_bpe of a text made only of special tokens")
    _check_bpe(ctx, " \n\n  \t \n " * 20, 300, [], "train_bpe of whitespace only")
    # Overlapping special tokens, the shorter listed first: the longer must win where both match.
    double = EOT + EOT
    text = "".join(f"{double}story {index}{EOT}tale{double}end " for index in range(20))
    _check_bpe(ctx, text, 320, [EOT, double], "train_bpe with overlapping special tokens")
    # A special token that extends another one by ordinary text: "user" must not be counted as text.
    chat = "".join(f"<|im|>user hi {index}<|im|>bot ok<|im|>user bye " for index in range(20))
    _check_bpe(
        ctx, chat, 300, ["<|im|>", "<|im|>user"], "train_bpe with a special token that extends another"
    )
    # Special tokens that look like ordinary text must still be cut out.
    words = "".join(f"the cat{ctx.rng.randint(0, 9)} sat the end " for _ in range(30))
    _check_bpe(ctx, words, 300, ["the", " sat"], "train_bpe with special tokens that are ordinary words")


@suite.test("train_bpe_larger_corpus")
def train_bpe_larger_corpus(ctx: Context) -> None:
    text = hidden_corpus(ctx, 60_000)
    _check_bpe(ctx, text, 700, [EOT], f"train_bpe of {len(text):,} characters, vocab_size 700")


# -- encoding and decoding ---------------------------------------------------------------------------------------


@suite.test("encode_basic")
def encode_basic(ctx: Context) -> None:
    vocab, merges = encoding_vocab()
    for text in ["Hello, world!", "the cat sat on the mat.", "It's 2027: we'll see 12345 tokens..."]:
        _check_encode(ctx, vocab, merges, [EOT], text)
    held_out = hidden_corpus(ctx, 5_000)
    _check_encode(ctx, vocab, merges, [EOT], held_out, f"encode of {len(held_out):,} characters of new text")


@suite.test("encode_special_tokens")
def encode_special_tokens(ctx: Context) -> None:
    vocab, merges = encoding_vocab()
    for text in [
        f"hello{EOT}world",
        f"{EOT}{EOT}",
        f"{EOT} start and end {EOT}",
        "almost <|endoftext| but not",
    ]:
        _check_encode(ctx, vocab, merges, [EOT], text)
    _check_encode(ctx, vocab, merges, [], f"no special tokens: {EOT} is ordinary text")


@suite.test("encode_overlapping_special_tokens")
def encode_overlapping_special_tokens(ctx: Context) -> None:
    double = EOT + EOT
    specials = [EOT, double, "<|im|>", "<|im_start|>", "<| \N{GREEK SMALL LETTER SIGMA} |>"]
    vocab, merges = encoding_vocab()
    vocab = vocab + [token.encode("utf-8") for token in specials[1:]]
    for text in [
        f"a{double}b",
        f"{EOT}{EOT}{EOT}",
        f"x{double}{EOT}y{double}",
        "<|im_start|>user<|im|> hi<| \N{GREEK SMALL LETTER SIGMA} |>",
        "<|im_sta <|im|<|im|>",
    ]:
        _check_encode(ctx, vocab, merges, specials, text)


@suite.test("encode_edge_cases")
def encode_edge_cases(ctx: Context) -> None:
    vocab, merges = encoding_vocab()
    cases = [
        "",
        " ",
        "  \n\n\t  \n",
        "trailing spaces   ",
        "I'll, you're, she'd, they've, it's, can't 'tis",
        "007 3.14159 1,000,000",
        "🙂👍🏽 東京 e\u0301te\u0301 Straße",
        "a" * 500,
        "\x00\x01 control \x7f",
    ]
    for text in cases:
        _check_encode(ctx, vocab, merges, [EOT], text)


@suite.test("encode_vocab_layout")
def encode_vocab_layout(ctx: Context) -> None:
    # The same tokens under other ids: single bytes are not at their byte value, special tokens come first.
    vocab, merges = encoding_vocab()
    order = list(range(len(vocab)))
    ctx.rng.shuffle(order)
    shuffled = [vocab[old] for old in order]
    text = hidden_corpus(ctx, 2_000)
    _check_encode(ctx, shuffled, merges, [EOT], text, "encode with a vocabulary whose ids are shuffled")


@suite.test("decode_roundtrip")
def decode_roundtrip(ctx: Context) -> None:
    vocab, merges = encoding_vocab()
    texts = ["", "Hello, world!", f"one{EOT}two", "东京 🙂 naïve", hidden_corpus(ctx, 3_000)]
    for text in texts:
        ids = reference_ids(vocab, merges, [EOT], text)
        got = ctx.call("decode", vocab, ids)
        _check_text(ctx, got, text, f"decode of the {ids.numel()} ids of {_describe(text)}")


@suite.test("decode_invalid_utf8")
def decode_invalid_utf8(ctx: Context) -> None:
    vocab, _ = encoding_vocab()
    cases = {
        "a lone continuation byte": [104, 0x80, 105],
        "the first two bytes of a three-byte character": [0xE6, 0x9D, 32, 104],
        "bytes that never occur in UTF-8": [0xFF, 0xC0, 0xAF],
        "a four-byte character cut short at the end": [104, 0xF0, 0x9F, 0x99],
    }
    for description, ids in cases.items():
        tensor = torch.tensor(ids, dtype=torch.int64)
        got = ctx.call("decode", vocab, tensor)
        _check_text(ctx, got, reference_text(vocab, tensor), f"decode of {description}")


@suite.test("encode_iterable")
def encode_iterable(ctx: Context) -> None:
    vocab, merges = encoding_vocab()
    text = hidden_corpus(ctx, 4_000)
    chunks = text.splitlines(keepends=True)
    _check_encode_iterable(ctx, vocab, merges, [EOT], chunks, f"encode_iterable of {len(chunks)} lines")


@suite.test("encode_iterable_split_anywhere")
def encode_iterable_split_anywhere(ctx: Context) -> None:
    vocab, merges = encoding_vocab()
    double = EOT + EOT
    vocab = [*vocab, double.encode("utf-8")]
    specials = [EOT, double]
    tricky = f"We'll  see:{EOT}it's {double}done   \n\n  x{EOT}y 🙂👍🏽"
    expected = reference_ids(vocab, merges, specials, tricky)
    # Every cut position of a short text full of traps (inside contractions, space runs, special tokens), two
    # cuts per call: at first and at first + half.
    half = (len(tricky) + 1) // 2
    for first in range(half + 1):
        second = min(first + half, len(tricky))
        chunks = [tricky[:first], tricky[first:second], tricky[second:]]
        what = f"encode_iterable of a text cut at {first} and {second}"
        _check_encode_iterable(ctx, vocab, merges, specials, chunks, what, expected)
    what = "encode_iterable of one-character chunks"
    _check_encode_iterable(ctx, vocab, merges, specials, list(tricky), what, expected)
    what = "encode_iterable with empty chunks"
    _check_encode_iterable(ctx, vocab, merges, specials, ["", tricky, "", ""], what, expected)
    stream = hidden_corpus(ctx, 30_000)
    cuts = sorted(ctx.rng.sample(range(1, len(stream)), 400))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    _check_encode_iterable(
        ctx, vocab, merges, specials, chunks, f"encode_iterable of {len(chunks)} random chunks"
    )


# -- rotary position embeddings ----------------------------------------------------------------------------------


@suite.test("rope_basic")
def rope_basic(ctx: Context) -> None:
    for shape in [(1, 8, 2, 16), (2, 16, 4, 64), (3, 5, 1, 2)]:
        positions = torch.arange(shape[1])
        _check_rope(ctx, ctx.randn(*shape), positions)


@suite.test("rope_positions")
def rope_positions(ctx: Context) -> None:
    # One decoding step far into the sequence, and a chunk that starts where a cache ends.
    _check_rope(ctx, ctx.randn(2, 1, 4, 32), torch.tensor([37]))
    _check_rope(ctx, ctx.randn(1, 6, 2, 32), torch.arange(1000, 1006))
    # Per-row positions (B, T), as left-padded batches have.
    per_row = torch.stack([torch.arange(8), torch.arange(8) + 3, torch.tensor([0, 0, 0, 0, 1, 2, 3, 4])])
    _check_rope(ctx, ctx.randn(3, 8, 2, 16), per_row)
    # Unsorted positions far apart (some may repeat), Llama 3's base, and half precision (computed in float32).
    scattered = torch.randint(0, 4096, (12,), generator=ctx.generator)
    _check_rope(ctx, ctx.randn(2, 12, 2, 64), scattered, theta=500000.0)
    for dtype in (torch.bfloat16, torch.float16):
        _check_rope(ctx, ctx.randn(2, 10, 3, 32, dtype=dtype), torch.arange(10) * 7)


@suite.test("rope_ntk_scaling")
def rope_ntk_scaling(ctx: Context) -> None:
    for shape, theta, scale in [((1, 16, 2, 8), 10000.0, 2.0), ((2, 24, 2, 64), 10000.0, 4.0)]:
        _check_rope(ctx, ctx.randn(*shape), torch.arange(shape[1]) * 10, theta=theta, ntk_scale=scale)
    _check_rope(ctx, ctx.randn(1, 12, 2, 32), torch.arange(12) * 100, theta=500000.0, ntk_scale=8.0)
    _check_rope(ctx, ctx.randn(1, 6, 1, 16), torch.arange(6), ntk_scale=1.0)


# -- token embedding --------------------------------------------------------------------------------------------


@suite.test("embedding_forward")
def embedding_forward(ctx: Context) -> None:
    for vocab_size, dim, ids_shape, dtype in [
        (50, 8, (4, 7), torch.float32),
        (1000, 32, (13,), torch.float32),
        (7, 4, (2, 3, 5), torch.float32),
        (300, 16, (3, 9), torch.bfloat16),
    ]:
        weight = ctx.randn(vocab_size, dim, dtype=dtype)
        ids = _random_ids(ctx, vocab_size, *ids_shape)
        ids[..., 0] = vocab_size - 1  # the last row too
        got = ctx.call("embedding", ids, weight)
        what = f"embedding of ids {tuple(ids.shape)} in a {dtype} table of shape {tuple(weight.shape)}"
        ctx.check_close(got, F.embedding(ids, weight), what=what, **EMBEDDING_TOL)


@suite.test("embedding_backward")
def embedding_backward(ctx: Context) -> None:
    for vocab_size, dim, ids_shape in [(20, 8, (4, 6)), (500, 16, (3, 40))]:
        weight = ctx.randn(vocab_size, dim)
        ids = _random_ids(
            ctx, vocab_size // 2, *ids_shape
        )  # half the rows: many repeated ids, some unused rows
        grad_output = ctx.randn(*ids_shape, dim)
        what = f"the gradient of embedding with respect to weight {tuple(weight.shape)} for ids {tuple(ids.shape)}"
        try:
            _, (grad_weight,) = ctx.call_grad("embedding", ids, weight, grad_output=grad_output, wrt=(1,))
        except TestFailure as failure:  # e.g. an output cut off from autograd: say which function it was
            raise TestFailure(f"{what}: {failure}", failure.detail) from None
        if grad_weight is None:
            ctx.fail(f"{what}: no gradient reached weight")
        expected = torch.zeros_like(weight).index_add_(0, ids.reshape(-1), grad_output.reshape(-1, dim))
        ctx.check_close(grad_weight, expected, what=what, **EMBEDDING_GRAD_TOL)


@suite.test("inputs_not_mutated")
def inputs_not_mutated(ctx: Context) -> None:
    x = ctx.randn(2, 6, 2, 16)
    ctx.check_not_mutated(ctx.invoke("rope", x, torch.arange(6)), "rope")
    ctx.check_not_mutated(ctx.invoke("rope", x, torch.arange(6), ntk_scale=2.0), "rope")
    weight = ctx.randn(30, 8)
    ctx.check_not_mutated(ctx.invoke("embedding", _random_ids(ctx, 30, 5, 4), weight), "embedding")
    vocab, merges = encoding_vocab()
    ids = reference_ids(vocab, merges, [EOT], "leave the ids alone")
    ctx.check_not_mutated(ctx.invoke("decode", vocab, ids), "decode")


# -- speed ----------------------------------------------------------------------------------------------------------

BENCHMARK_CHARS = 200_000
BENCHMARK_VOCAB_SIZE = 1000


def _reference_encode(vocab: list[bytes], merges: list, special_tokens: list[str], text: str) -> torch.Tensor:
    return reference_ids(vocab, merges, special_tokens, text)


# Every timed result is checked as in the tests: all merges and the whole vocabulary, every id.
def _check_timed_training(ctx: Context, got: Any, expected: list) -> None:
    _check_training(ctx, got, expected, f"train_bpe of the timed corpus ({BENCHMARK_CHARS:,} characters)")


def _check_timed_ids(ctx: Context, got: Any, expected: torch.Tensor) -> None:
    _check_ids(ctx, got, expected, f"encode of the timed text ({BENCHMARK_CHARS:,} characters)")


@suite.benchmark(
    "bpe_train_ms",
    unit="ms",
    reference=reference_training,
    warmup=1,
    warmup_seconds=30.0,
    min_reps=3,
    max_reps=4,
    max_seconds=20.0,
    target_rse=0.05,
)
def bpe_train_speed(ctx: Context) -> Case:
    text = hidden_corpus(ctx, BENCHMARK_CHARS)
    return Case("train_bpe", (text, BENCHMARK_VOCAB_SIZE, [EOT]), check=_check_timed_training)


@suite.benchmark(
    "encode_ms",
    unit="ms",
    reference=_reference_encode,
    warmup=1,
    warmup_seconds=30.0,
    min_reps=3,
    max_reps=4,
    max_seconds=10.0,
    target_rse=0.05,
)
def encode_speed(ctx: Context) -> Case:
    vocab, merges = _trained(23, 200_000, BENCHMARK_VOCAB_SIZE, (EOT,))
    text = hidden_corpus(ctx, BENCHMARK_CHARS)
    arguments = (list(vocab), [list(merge) for merge in merges], [EOT], text)
    return Case("encode", arguments, check=_check_timed_ids)
