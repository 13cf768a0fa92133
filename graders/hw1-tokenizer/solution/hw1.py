"""Homework 1, model solution: byte-level BPE, rotary position embeddings (RoPE) and token embedding.

Self-contained student-style code: it runs in the sandbox, where only this file, torch and regex are available.
"""

from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import pairwise

import regex
import torch

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs and punctuation runs (each with at most one
# leading space), then whitespace; "\s+(?!\S)" leaves the last space of a run to start the next word.
PRETOKEN_RE = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
WHITESPACE_RE = regex.compile(r"\s")  # whitespace as the pre-tokenizer sees it
# encode_iterable encodes what it holds once it holds this many characters.
STREAM_FLUSH_CHARS = 1 << 12


def _special_re(special_tokens: list[str]) -> regex.Pattern | None:
    """One alternation of the special tokens, longest first: where two match at one place, the longer wins."""
    tokens = sorted(set(special_tokens), key=len, reverse=True)
    if not tokens:
        return None
    return regex.compile("|".join(regex.escape(token) for token in tokens))


def _segments(text: str, special_re: regex.Pattern | None) -> Iterator[tuple[str, bool]]:
    """``text`` as (piece, is_special) in order: ordinary text between the special-token matches."""
    if special_re is None:
        yield text, False
        return
    position = 0
    for match in special_re.finditer(text):
        yield text[position : match.start()], False
        yield match.group(), True
        position = match.end()
    yield text[position:], False


# -- training -------------------------------------------------------------------------------------------------


def train_bpe(
    text: str, vocab_size: int, special_tokens: list[str]
) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """Learn byte-level BPE merges on ``text`` until the vocabulary has ``vocab_size`` entries.

    Vocabulary layout: ids 0..255 are the single bytes, then the special tokens in the order given, then one
    token per merge. Each step merges the most frequent adjacent pair; ties go to the greater
    ``(left bytes, right bytes)``. Special tokens are cut out of the text first and take part in no merge.
    """
    specials = list(dict.fromkeys(special_tokens))
    vocab = [bytes([byte]) for byte in range(256)] + [token.encode("utf-8") for token in specials]
    if vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size {vocab_size} cannot hold the 256 bytes and {len(specials)} special tokens"
        )

    pretoken_counts: Counter[str] = Counter()
    for piece, is_special in _segments(text, _special_re(specials)):
        if not is_special:
            pretoken_counts.update(PRETOKEN_RE.findall(piece))

    # Every distinct pre-token once, as a list of token ids, with how often it occurs.
    words = [list(pretoken.encode("utf-8")) for pretoken in pretoken_counts]
    word_counts = list(pretoken_counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    words_with: dict[tuple[int, int], set[int]] = defaultdict(set)  # may list words that lost the pair
    for index, word in enumerate(words):
        for pair in pairwise(word):
            pair_counts[pair] += word_counts[index]
            words_with[pair].add(index)

    # Pairs grouped by count, so the most frequent ones are found without scanning every pair each step.
    by_count: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for pair, count in pair_counts.items():
        by_count[count].add(pair)
    top_count = max(pair_counts.values(), default=0)

    merges: list[tuple[bytes, bytes]] = []
    while len(vocab) < vocab_size:
        while top_count > 0 and not by_count.get(top_count):
            top_count -= 1
        if top_count == 0:
            break  # no adjacent pair left anywhere
        left, right = max(by_count[top_count], key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        new_id = len(vocab)
        vocab.append(vocab[left] + vocab[right])
        merges.append((vocab[left], vocab[right]))

        # Recount only the words that held the pair: take their old pairs out, put their new pairs in.
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for index in words_with.pop((left, right)):
            word = words[index]
            count = word_counts[index]
            merged = _merge_word(word, left, right, new_id)
            if len(merged) == len(word):
                continue  # a stale entry: this word no longer holds the pair
            for pair in pairwise(word):
                delta[pair] -= count
            for pair in pairwise(merged):
                delta[pair] += count
                words_with[pair].add(index)
            words[index] = merged

        for pair, change in delta.items():
            if change == 0:
                continue
            old = pair_counts.get(pair, 0)
            new = old + change
            if old:
                by_count[old].discard(pair)
            if new:
                pair_counts[pair] = new
                by_count[new].add(pair)
                top_count = max(top_count, new)
            else:
                pair_counts.pop(pair, None)
    return vocab, merges


def _merge_word(word: list[int], left: int, right: int, new_id: int) -> list[int]:
    """``word`` with every non-overlapping (left, right), scanned left to right, replaced by ``new_id``."""
    merged: list[int] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


# -- encoding and decoding --------------------------------------------------------------------------------------


class _Encoder:
    """What encoding needs from a vocabulary: ids of byte strings, merge ranks, special tokens, and a cache."""

    def __init__(self, vocab: list[bytes], merges: list, special_tokens: list[str]) -> None:
        self.id_of: dict[bytes, int] = {}
        for token_id in range(len(vocab) - 1, -1, -1):  # the lowest id wins where two ids share bytes
            self.id_of[bytes(vocab[token_id])] = token_id
        self.byte_ids = [self.id_of[bytes([byte])] for byte in range(256)]
        # (left id, right id) -> (rank, merged id); the first listing of a pair wins.
        self.ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(merges):
            key = (self.id_of[bytes(left)], self.id_of[bytes(right)])
            self.ranks.setdefault(key, (rank, self.id_of[bytes(left) + bytes(right)]))
        self.special_tokens = list(dict.fromkeys(special_tokens))
        self.special_re = _special_re(self.special_tokens)
        self.longest_special = max((len(token) for token in self.special_tokens), default=0)
        self.cache: dict[str, list[int]] = {}

    def encode(self, text: str, ids: list[int]) -> None:
        for piece, is_special in _segments(text, self.special_re):
            if is_special:
                ids.append(self.id_of[piece.encode("utf-8")])
            else:
                for pretoken in PRETOKEN_RE.findall(piece):
                    token_ids = self.cache.get(pretoken)
                    if token_ids is None:
                        token_ids = self.cache[pretoken] = self._bpe(pretoken)
                    ids.extend(token_ids)

    def _bpe(self, pretoken: str) -> list[int]:
        """Apply the merges to one pre-token: always the lowest-ranked pair present, everywhere it occurs."""
        word = [self.byte_ids[byte] for byte in pretoken.encode("utf-8")]
        while len(word) > 1:
            ranked = [(self.ranks[pair], pair) for pair in pairwise(word) if pair in self.ranks]
            if not ranked:
                break
            (_, new_id), (left, right) = min(ranked)
            word = _merge_word(word, left, right, new_id)
        return word

    def settled_length(self, text: str) -> int:
        """The length of the longest prefix of ``text`` whose ids no continuation of the text can change.

        A special-token match that starts at least ``longest - 1`` characters before the end is final (every
        alternative was tried in full). In the ordinary text after it, a space that follows a non-space
        character always starts a new pre-token (no pattern runs from a non-space into a space, and a
        contraction looks at most up to that space), so the text can be cut there.
        """
        limit = len(text) - max(self.longest_special - 1, 0)
        settled = 0
        if self.special_re is not None:
            for match in self.special_re.finditer(text):
                if match.start() >= limit:
                    break
                settled = match.end()
        for cut in range(limit - 1, settled, -1):
            if text[cut] == " " and not WHITESPACE_RE.match(text[cut - 1]):
                return cut
        return settled


def _as_tensor(ids: list[int]) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int64)  # an empty list gives shape (0,)


def encode(vocab: list[bytes], merges: list, special_tokens: list[str], text: str) -> torch.Tensor:
    """The token ids of ``text`` as an int64 tensor of shape ``(N,)``."""
    ids: list[int] = []
    _Encoder(vocab, merges, special_tokens).encode(text, ids)
    return _as_tensor(ids)


def encode_iterable(
    vocab: list[bytes], merges: list, special_tokens: list[str], chunks: list[str]
) -> torch.Tensor:
    """The ids of ``"".join(chunks)``, encoded as the chunks arrive while holding only an unsettled tail."""
    encoder = _Encoder(vocab, merges, special_tokens)
    ids: list[int] = []
    held = ""
    for chunk in chunks:
        held += chunk
        if len(held) >= STREAM_FLUSH_CHARS:
            cut = encoder.settled_length(held)
            encoder.encode(held[:cut], ids)
            held = held[cut:]
    encoder.encode(held, ids)
    return _as_tensor(ids)


def decode(vocab: list[bytes], ids: torch.Tensor) -> str:
    """The text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
    return b"".join(bytes(vocab[token_id]) for token_id in ids.tolist()).decode("utf-8", errors="replace")


# -- positions and embeddings -----------------------------------------------------------------------------------


def rope(
    x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0, ntk_scale: float | None = None
) -> torch.Tensor:
    """Rotate each feature pair ``(x[..., 2i], x[..., 2i+1])`` of ``x`` (B, T, H, D) by ``m * theta**(-2i/D)``.

    ``positions`` is (T,) or (B, T). With ``ntk_scale`` s the base becomes ``theta * s**(D / (D - 2))``.
    Computed in float32; the result has the dtype of ``x``.
    """
    B, T, H, D = x.shape
    if ntk_scale is not None:
        theta = theta * ntk_scale ** (D / (D - 2))
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)  # (D/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (T, D/2) or (B, T, D/2)
    angles = angles.reshape(-1, T, 1, D // 2)  # (B or 1, T, 1, D/2): the same for every head
    cos, sin = angles.cos(), angles.sin()
    pairs = x.to(torch.float32).reshape(B, T, H, D // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]  # (B, T, H, D/2)
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (B, T, H, D/2, 2)
    return rotated.reshape(B, T, H, D).to(x.dtype)


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` (V, C) picked by ``ids`` (any shape): shape ``(*ids.shape, C)``."""
    return weight[ids]
