"""Byte-level BPE as in GPT-2: training (:func:`train_bpe`), encoding and decoding (:class:`Tokenizer`).

Text is cut into special tokens and ordinary text; ordinary text is cut into pre-tokens by GPT-2's regex
(:data:`GPT2_PRETOKEN_PATTERN`: contractions, letter runs, digit runs, punctuation runs, each with at most one
leading space, and whitespace); each pre-token's UTF-8 bytes are then merged pairwise by the learned merges.
No merge ever crosses a pre-token, so none crosses a special token either.

Vocabulary layout produced by :func:`train_bpe`: ids 0..255 are the 256 single bytes (id == byte value), then
the special tokens in the order given, then one id per merge in creation order. :class:`Tokenizer` accepts any
vocabulary that contains the 256 single bytes and every merge result (GPT-2's own files included).

Training picks, at each step, the adjacent pair with the highest count over the corpus; ties go to the
lexicographically greater pair of byte strings, compared as the tuple ``(left, right)``.
"""

from __future__ import annotations

import heapq
import json
import multiprocessing
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import pairwise, repeat
from pathlib import Path
from typing import BinaryIO

import regex

GPT2_PRETOKEN_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PRETOKEN_RE = regex.compile(GPT2_PRETOKEN_PATTERN)

# Below this size a process pool costs more than it saves.
_PARALLEL_MIN_BYTES = 1 << 20
# Pre-token -> ids cache entries kept by a Tokenizer; bounded so a long stream cannot grow it without limit.
_CACHE_MAX_ENTRIES = 1 << 16


def _special_token_re(special_tokens: Iterable[str]) -> re.Pattern[str] | None:
    """Alternation tried longest first, so that of two special tokens matching at one place the longer wins."""
    tokens = sorted(set(special_tokens), key=len, reverse=True)
    if not tokens:
        return None
    if "" in tokens:
        raise ValueError("a special token cannot be the empty string")
    return re.compile("|".join(re.escape(token) for token in tokens))


# ---------------------------------------------------------------------------------------------------------
# Training: pre-token counts (in parallel), then merges with incremental pair counts.
# ---------------------------------------------------------------------------------------------------------


def train_bpe(
    input_path: str | os.PathLike[str],
    vocab_size: int,
    special_tokens: list[str],
    *,
    num_processes: int | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE vocabulary of ``vocab_size`` entries on the UTF-8 file at ``input_path``.

    Returns ``(vocab, merges)``: ``vocab`` maps id -> bytes in the layout described in the module docstring
    and ``merges`` lists the merged pairs in creation order. Training stops early when no adjacent pair is
    left. Special tokens are removed from the text before counting, so they take part in no merge.

    ``num_processes`` (default: one for inputs under 1 MiB, else one per CPU) only changes the speed of
    pre-token counting; the result is the same for every value.
    """
    special_tokens = list(dict.fromkeys(special_tokens))
    first_merge_id = 256 + len(special_tokens)
    if vocab_size < first_merge_id:
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the 256 bytes plus {len(special_tokens)} special tokens"
        )
    vocab = {byte: bytes([byte]) for byte in range(256)}
    for offset, token in enumerate(special_tokens):
        vocab[256 + offset] = token.encode("utf-8")
    pretoken_counts = count_pretokens(input_path, special_tokens, num_processes=num_processes)
    merges = _learn_merges(pretoken_counts, vocab, vocab_size - first_merge_id)
    return vocab, merges


def count_pretokens(
    input_path: str | os.PathLike[str], special_tokens: list[str], *, num_processes: int | None = None
) -> Counter[str]:
    """How often each pre-token occurs in the file, special tokens left out.

    The file is cut into chunks at special-token boundaries (the only places where pre-tokenization is known to
    restart), and the chunks are counted in ``num_processes`` worker processes. A file without special tokens
    is one chunk.
    """
    size = os.path.getsize(input_path)
    if num_processes is None:
        num_processes = 1 if size < _PARALLEL_MIN_BYTES else (os.cpu_count() or 1)
    if multiprocessing.current_process().daemon:
        # A daemonic process (a Celery prefork child, say) may not start children: count in this one.
        num_processes = 1
    # Several chunks per worker even out chunks of unequal cost.
    boundaries = find_chunk_boundaries(input_path, 4 * num_processes, special_tokens)
    spans = list(pairwise(boundaries))
    counts: Counter[str] = Counter()
    if num_processes <= 1 or len(spans) <= 1:
        for start, end in spans:
            counts.update(_count_chunk(input_path, start, end, special_tokens))
        return counts
    with ProcessPoolExecutor(max_workers=min(num_processes, len(spans))) as pool:
        starts, ends = zip(*spans, strict=True)
        for chunk in pool.map(_count_chunk, repeat(input_path), starts, ends, repeat(special_tokens)):
            counts.update(chunk)
    return counts


def _count_chunk(
    input_path: str | os.PathLike[str], start: int, end: int, special_tokens: list[str]
) -> Counter[str]:
    with open(input_path, "rb") as file:
        file.seek(start)
        text = file.read(end - start).decode("utf-8")
    special_re = _special_token_re(special_tokens)
    counts: Counter[str] = Counter()
    for segment in special_re.split(text) if special_re else [text]:
        counts.update(_PRETOKEN_RE.findall(segment))
    return counts


def find_chunk_boundaries(
    input_path: str | os.PathLike[str], desired_chunks: int, special_tokens: list[str]
) -> list[int]:
    """Byte offsets ``[0, ..., file size]`` cutting the file into at most ``desired_chunks`` chunks.

    Each inner offset is the start of the first special token at or after an evenly spaced guess, provided no
    other occurrence of a special token straddles it (with overlapping special tokens, a cut inside the longer
    match would change the result). Fewer chunks come back when guesses find the same token or none at all.
    """
    size = os.path.getsize(input_path)
    tokens = [token.encode("utf-8") for token in dict.fromkeys(special_tokens)]
    if not tokens or desired_chunks <= 1:
        return [0, size]
    boundaries = {0, size}
    with open(input_path, "rb") as file:
        for k in range(1, desired_chunks):
            boundaries.add(_next_special_token_start(file, size * k // desired_chunks, size, tokens))
    return sorted(boundaries)


def _next_special_token_start(file: BinaryIO, position: int, size: int, tokens: list[bytes]) -> int:
    """Offset of the first safe special-token start at or after ``position``, or ``size`` if there is none."""
    margin = max(len(token) for token in tokens) - 1
    block = 1 << 16
    while position < size:
        # Starts are looked for in [position, position + block); the margin on either side lets _straddled see
        # every token occurrence that overlaps such a start.
        window_start = max(position - margin, 0)
        file.seek(window_start)
        window = file.read(position + block + margin - window_start)
        search_from = position - window_start
        search_end = search_from + block
        while True:
            found = (window.find(token, search_from) for token in tokens)
            starts = [i for i in found if -1 < i < search_end]
            if not starts:
                break
            candidate = min(starts)
            if not _straddled(window, candidate, tokens):
                return window_start + candidate
            search_from = candidate + 1
        position += block
    return size


def _straddled(window: bytes, cut: int, tokens: list[bytes]) -> bool:
    """Whether an occurrence of any token starts before ``cut`` and ends after it."""
    for token in tokens:
        i = window.find(token, max(cut - len(token) + 1, 0))
        while i != -1 and i < cut:
            if i + len(token) > cut:
                return True
            i = window.find(token, i + 1)
    return False


def _learn_merges(
    pretoken_counts: Counter[str], vocab: dict[int, bytes], num_merges: int
) -> list[tuple[bytes, bytes]]:
    """Run ``num_merges`` merge steps, adding each new token to ``vocab``; return the merged pairs.

    State: every distinct pre-token as a list of token ids with its count; ``pair_counts`` (pair -> total count);
    ``words_with`` (pair -> indices of the words that contain it, possibly stale). A merge only visits the words
    holding the merged pair and updates the counts of the pairs next to each occurrence.

    The best pair comes from a heap of ``(-count, order key of left, order key of right, pair)``. Entries are
    pushed when a count grows and checked when popped: an entry whose count is stale is dropped, or pushed back
    with the current count if that is lower. Every live pair always has an entry with a count at least its
    current one, so the first entry popped whose count is current is the true maximum.
    """
    words: list[list[int]] = []
    word_counts: list[int] = []
    for pretoken, count in pretoken_counts.items():
        ids = list(pretoken.encode("utf-8"))  # byte ids are the byte values
        if len(ids) > 1:
            words.append(ids)
            word_counts.append(count)

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    words_with: dict[tuple[int, int], set[int]] = defaultdict(set)
    for index, (ids, count) in enumerate(zip(words, word_counts, strict=True)):
        for pair in pairwise(ids):
            pair_counts[pair] += count
            words_with[pair].add(index)

    # The heap pops the smallest entry, so greater bytes need smaller keys: each byte b becomes 255 - b, and a
    # closing 256 makes a proper prefix (a smaller byte string) sort after its extensions.
    order_key = {token: (*(255 - b for b in data), 256) for token, data in vocab.items()}
    heap = [(-count, order_key[a], order_key[b], (a, b)) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges and heap:
        negative_count, _, _, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if current != -negative_count:
            if 0 < current < -negative_count:
                heapq.heappush(heap, (-current, order_key[pair[0]], order_key[pair[1]], pair))
            continue

        left, right = pair
        new_id = len(vocab)
        vocab[new_id] = vocab[left] + vocab[right]
        order_key[new_id] = (*(255 - b for b in vocab[new_id]), 256)
        merges.append((vocab[left], vocab[right]))

        delta: dict[tuple[int, int], int] = defaultdict(int)
        for index in words_with.pop(pair):
            ids = words[index]
            count = word_counts[index]
            merged: list[int] = []
            n = len(ids)
            i = 0
            while i < n:
                token = ids[i]
                if token == left and i + 1 < n and ids[i + 1] == right:
                    if merged:  # the pair before this occurrence, (x, left), becomes (x, new)
                        before = merged[-1]
                        delta[before, left] -= count
                        delta[before, new_id] += count
                        words_with[before, new_id].add(index)
                    if i + 2 < n:  # the pair after it, (right, y), becomes (new, y)
                        after = ids[i + 2]
                        delta[right, after] -= count
                        delta[new_id, after] += count
                        words_with[new_id, after].add(index)
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(token)
                    i += 1
            words[index] = merged

        del pair_counts[pair]
        for changed, change in delta.items():
            if change == 0 or changed == pair:
                continue
            count = pair_counts[changed] + change
            if count:
                pair_counts[changed] = count
            else:
                del pair_counts[changed]
            if change > 0:
                heapq.heappush(heap, (-count, order_key[changed[0]], order_key[changed[1]], changed))
    return merges


# ---------------------------------------------------------------------------------------------------------
# GPT-2's file format: every byte is shown as a printable character so that tokens are valid JSON strings.
# ---------------------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the other 68 bytes
    (control characters, space, and a few more) take the characters from U+0100 on, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {char: byte for byte, char in _BYTE_TO_CHAR.items()}


def token_to_string(token: bytes) -> str:
    return "".join(_BYTE_TO_CHAR[byte] for byte in token)


def string_to_token(text: str) -> bytes:
    """Inverse of :func:`token_to_string`; text outside the table (a special token written as itself, as
    some files do) is taken as UTF-8."""
    if all(char in _CHAR_TO_BYTE for char in text):
        return bytes(_CHAR_TO_BYTE[char] for char in text)
    return text.encode("utf-8")


# ---------------------------------------------------------------------------------------------------------
# Encoding and decoding.
# ---------------------------------------------------------------------------------------------------------


class Tokenizer:
    """Encode text to token ids and back with a byte-level BPE vocabulary and its merges.

    Special tokens are matched in the text before anything else (the longest wins where two overlap) and each
    becomes its own id; one missing from ``vocab`` gets the next free id (in the tokenizer's own copy).
    Pre-token ids are cached, so repeated words cost a dictionary lookup.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
    ) -> None:
        self.vocab = dict(vocab)
        self.merges = list(merges)
        self.special_tokens = list(dict.fromkeys(special_tokens or []))
        self._id_of: dict[bytes, int] = {}
        for token_id in sorted(self.vocab, reverse=True):  # the lowest id wins for duplicate bytes
            self._id_of[self.vocab[token_id]] = token_id
        for token in self.special_tokens:
            if token.encode("utf-8") not in self._id_of:
                new_id = max(self.vocab, default=-1) + 1
                self.vocab[new_id] = token.encode("utf-8")
                self._id_of[self.vocab[new_id]] = new_id
        self._special_ids = {token: self._id_of[token.encode("utf-8")] for token in self.special_tokens}
        self._special_re = _special_token_re(self.special_tokens)
        self._max_special_len = max((len(token) for token in self.special_tokens), default=0)

        missing = [byte for byte in range(256) if bytes([byte]) not in self._id_of]
        if missing:
            raise ValueError(
                f"the vocabulary lacks single bytes {missing[:8]}{'...' if len(missing) > 8 else ''}"
            )
        self._byte_ids = [self._id_of[bytes([byte])] for byte in range(256)]
        # (left id, right id) -> (rank, merged id); the first listing of a pair wins.
        self._merge_ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(self.merges):
            if left not in self._id_of or right not in self._id_of or left + right not in self._id_of:
                raise ValueError(
                    f"merge {rank} {left!r} + {right!r} uses or makes a token not in the vocabulary"
                )
            pair = (self._id_of[left], self._id_of[right])
            self._merge_ranks.setdefault(pair, (rank, self._id_of[left + right]))
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_files(
        cls,
        vocab_path: str | os.PathLike[str],
        merges_path: str | os.PathLike[str],
        special_tokens: list[str] | None = None,
    ) -> Tokenizer:
        """Load GPT-2's ``vocab.json`` (token string -> id) and ``merges.txt`` (one ``left right`` per line
        after a ``#version`` header), token strings written with :func:`bytes_to_unicode`."""
        with open(vocab_path, encoding="utf-8") as file:
            vocab = {int(token_id): string_to_token(text) for text, token_id in json.load(file).items()}
        merges = []
        with open(merges_path, encoding="utf-8") as file:
            for line_number, line in enumerate(file, start=1):
                line = line.rstrip("\r\n")
                if not line or (line_number == 1 and line.startswith("#version")):
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"{merges_path}:{line_number}: expected two tokens, got {line!r}")
                merges.append((string_to_token(parts[0]), string_to_token(parts[1])))
        return cls(vocab, merges, special_tokens)

    def to_files(self, vocab_path: str | os.PathLike[str], merges_path: str | os.PathLike[str]) -> None:
        """Write ``vocab.json`` and ``merges.txt`` in GPT-2's format, readable by :meth:`from_files` and by
        Hugging Face's GPT-2 tokenizers. Special tokens are in ``vocab.json`` but not marked as special: pass
        them again when loading."""
        vocab = {token_to_string(data): token_id for token_id, data in sorted(self.vocab.items())}
        if len(vocab) != len(self.vocab):
            raise ValueError("two ids share the same bytes, which vocab.json cannot hold")
        Path(vocab_path).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2", *(f"{token_to_string(a)} {token_to_string(b)}" for a, b in self.merges)]
        Path(merges_path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``."""
        ids: list[int] = []
        if self._special_re is None:
            self._encode_ordinary(text, ids)
            return ids
        position = 0
        for match in self._special_re.finditer(text):
            self._encode_ordinary(text[position : match.start()], ids)
            ids.append(self._special_ids[match.group()])
            position = match.end()
        self._encode_ordinary(text[position:], ids)
        return ids

    def encode_iterable(self, iterable: Iterable[str], *, min_chunk_chars: int = 1 << 16) -> Iterator[int]:
        """The ids of ``"".join(iterable)``, produced lazily, holding about ``min_chunk_chars`` characters.

        Text is gathered until there are ``min_chunk_chars`` characters, then everything whose ids cannot change
        whatever follows is encoded and the rest kept for the next round (see :meth:`_encode_settled`).
        """
        pending: list[str] = []
        pending_chars = 0
        held = ""
        for chunk in iterable:
            pending.append(chunk)
            pending_chars += len(chunk)
            if pending_chars >= min_chunk_chars:
                text = held + "".join(pending)
                pending.clear()
                pending_chars = 0
                ids, settled = self._encode_settled(text)
                held = text[settled:]
                yield from ids
        yield from self.encode(held + "".join(pending))

    def _encode_settled(self, text: str) -> tuple[list[int], int]:
        """Encode the longest prefix of ``text`` that more text cannot change; return its ids and length.

        Special tokens: a match starting ``max_len - 1`` or more characters before the end is settled (every
        alternative could be tried in full). Ordinary text after the last settled special token: its last two
        pre-tokens are held back. The last could grow (``"ab"`` + ``"c"``), and the one before could too, as GPT-2's
        regex looks up to three characters ahead for a contraction (``"'"``, ``"l"`` + ``"l"`` is ``"'ll"``). Any
        earlier pre-token ends before the last two start, so its match never looked past the text.
        """
        ids: list[int] = []
        position = 0
        text_end = len(text)
        if self._special_re is not None:
            limit = len(text) - (self._max_special_len - 1)
            for match in self._special_re.finditer(text):
                if match.start() >= limit:
                    break
                self._encode_ordinary(text[position : match.start()], ids)
                ids.append(self._special_ids[match.group()])
                position = match.end()
            text_end = max(limit, position)
        pretokens = _PRETOKEN_RE.findall(text[position:text_end])
        if len(pretokens) <= 2:
            return ids, position
        self._encode_pretokens(pretokens[:-2], ids)
        return ids, text_end - len(pretokens[-1]) - len(pretokens[-2])

    def _encode_ordinary(self, text: str, ids: list[int]) -> None:
        self._encode_pretokens(_PRETOKEN_RE.findall(text), ids)

    def _encode_pretokens(self, pretokens: list[str], ids: list[int]) -> None:
        cache = self._cache
        for pretoken in pretokens:
            token_ids = cache.get(pretoken)
            if token_ids is None:
                token_ids = self._bpe(pretoken)
                if len(cache) >= _CACHE_MAX_ENTRIES:
                    cache.clear()
                cache[pretoken] = token_ids
            ids.extend(token_ids)

    def _bpe(self, pretoken: str) -> tuple[int, ...]:
        """Apply merges to one pre-token, lowest rank first, every occurrence of that pair left to right."""
        ids = [self._byte_ids[byte] for byte in pretoken.encode("utf-8")]
        ranks = self._merge_ranks
        no_merge = (len(self.merges), -1)
        while len(ids) > 1:
            best = min(pairwise(ids), key=lambda pair: ranks.get(pair, no_merge))
            if best not in ranks:
                break
            left, right = best
            merged_id = ranks[best][1]
            merged: list[int] = []
            i = 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == left and ids[i + 1] == right:
                    merged.append(merged_id)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
        return tuple(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        try:
            data = b"".join(self.vocab[token_id] for token_id in ids)
        except KeyError as error:
            raise ValueError(f"unknown token id {error.args[0]}") from None
        return data.decode("utf-8", errors="replace")
