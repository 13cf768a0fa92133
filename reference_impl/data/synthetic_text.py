"""Deterministic English-like text for tokenizer tests and benchmarks, free of any licence.

Made-up words drawn with Zipf-like frequencies (so BPE finds structure to learn), mixed with the things a
byte-level tokenizer must get right: contractions, numbers, punctuation runs, repeated spaces, tabs, blank
lines, accented and non-Latin words, emoji and combining marks. The same seed always gives the same text.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

END_OF_TEXT = "<|endoftext|>"

_FUNCTION_WORDS = (  # noqa: SIM905 (a few lines, not one line per word)
    "the a an of to and in is it that was for on with as he she they we you his her their at by from "
    "but not or be this have had one all there when so said then"
).split()
_CONTRACTIONS = ["don't", "it's", "we'll", "I'm", "they've", "you're", "she'd", "can't", "Tom's", "'re"]
_SYLLABLES = (  # noqa: SIM905 (a few lines, not one line per word)
    "ka ro mi ten sa lo ver dan el qu is po ny tha ble ing er ous mon ar ti la be cor wes fin gal ha"
).split()
_UNICODE_WORDS = [
    "café",
    "naïve",
    "Straße",
    "Ελλάδα",
    "Москва",
    "東京",
    "مرحبا",
    "नमस्ते",
    "e\u0301te\u0301",
    "🙂",
    "👍🏽",
    "👩‍👩‍👧",
]
_PUNCTUATION = [".", ".", ".", ",", "!", "?", ";", ":", "...", " -", '."', "?!"]
_SPACES = [" "] * 40 + ["  ", "\t", "   "]


def make_lexicon(rng: random.Random, size: int) -> list[str]:
    """``size`` distinct made-up words of one to four syllables, most frequent first."""
    words: dict[str, None] = dict.fromkeys(_FUNCTION_WORDS)
    while len(words) < size:
        words["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4)))] = None
    return list(words)[:size]


def _sentence(rng: random.Random, lexicon: list[str], cum_weights: list[float]) -> str:
    words = rng.choices(lexicon, cum_weights=cum_weights, k=rng.randint(4, 18))
    roll = rng.random()
    if roll < 0.15:
        words[rng.randrange(len(words))] = rng.choice(_CONTRACTIONS)
    elif roll < 0.25:
        words[rng.randrange(len(words))] = str(rng.randint(0, 10 ** rng.randint(1, 6)))
    elif roll < 0.30:
        words[rng.randrange(len(words))] = rng.choice(_UNICODE_WORDS)
    words[0] = words[0].capitalize()
    text = words[0]
    for word in words[1:]:
        text += rng.choice(_SPACES) + word
    return text + rng.choice(_PUNCTUATION)


def generate_document(rng: random.Random, lexicon: list[str], cum_weights: list[float]) -> str:
    """One short story: a few paragraphs of sentences, paragraphs separated by one or two newlines."""
    paragraphs = []
    for _ in range(rng.randint(1, 4)):
        sentences = [_sentence(rng, lexicon, cum_weights) for _ in range(rng.randint(1, 6))]
        paragraphs.append(" ".join(sentences))
    return "".join(p + rng.choice(["\n", "\n\n", "\n \n"]) for p in paragraphs)


def _start(seed: int, lexicon_size: int) -> tuple[random.Random, list[str], list[float]]:
    rng = random.Random(seed)  # noqa: S311 (reproducible text, not secrets)
    lexicon = make_lexicon(rng, lexicon_size)
    cum_weights = list(itertools.accumulate(1.0 / rank for rank in range(1, len(lexicon) + 1)))
    return rng, lexicon, cum_weights


def generate_documents(count: int, *, seed: int = 0, lexicon_size: int = 5000) -> list[str]:
    """``count`` documents; the vocabulary grows with ``lexicon_size``, word frequencies follow ``1 / rank``."""
    rng, lexicon, cum_weights = _start(seed, lexicon_size)
    return [generate_document(rng, lexicon, cum_weights) for _ in range(count)]


def generate_corpus(n_chars: int, *, seed: int = 0, lexicon_size: int = 5000) -> str:
    """At least ``n_chars`` characters of documents joined by ``<|endoftext|>``, as TinyStories is laid out."""
    rng, lexicon, cum_weights = _start(seed, lexicon_size)
    documents: list[str] = []
    total = 0
    while total < n_chars:
        documents.append(generate_document(rng, lexicon, cum_weights))
        total += len(documents[-1]) + len(END_OF_TEXT)
    return END_OF_TEXT.join(documents)


def write_corpus(path: str | Path, n_chars: int, *, seed: int = 0, lexicon_size: int = 5000) -> Path:
    """:func:`generate_corpus` written to ``path`` as UTF-8 (no newline translation)."""
    path = Path(path)
    path.write_bytes(generate_corpus(n_chars, seed=seed, lexicon_size=lexicon_size).encode("utf-8"))
    return path
