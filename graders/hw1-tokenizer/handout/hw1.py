"""Homework 1: byte-level BPE tokenizer, rotary position embeddings (RoPE) and token embedding.

Implement the six functions below. Every function takes and returns plain values (str, int, float, bytes, lists,
torch.Tensor): the grader calls them one at a time, so keep no state between calls that a result depends on.
You may add helpers, classes and more files (a package ``hw1/`` with ``__init__.py``), and use ``regex`` (the
third-party module, for ``\\p{L}``) and torch. Do not use tokenizer libraries (tokenizers, tiktoken,
transformers, sentencepiece) or torch's embedding functions. Submit with ``autograder submit hw1-tokenizer hw1.py``.

Vocabulary layout made by train_bpe: ids 0..255 are the 256 single bytes (id b is ``bytes([b])``), then the
special tokens in the order given, then one token per merge in the order the merges were learned.
"""

import torch

# GPT-2's pre-tokenizer, for ``regex`` (not ``re``): contractions, runs of letters, of digits and of other
# symbols (each with at most one leading space), and whitespace.
PRETOKEN_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def train_bpe(
    text: str, vocab_size: int, special_tokens: list[str]
) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE vocabulary of at most ``vocab_size`` tokens on ``text``.

    1. Split ``text`` on the special tokens (where two overlap, the longest match wins); special tokens take
       part in no merge.
    2. Cut each remaining piece into pre-tokens with PRETOKEN_PATTERN; each pre-token is a sequence of its
       UTF-8 bytes. Merges never cross a pre-token boundary.
    3. Repeat until the vocabulary has ``vocab_size`` tokens or no adjacent pair is left: find the adjacent
       pair with the highest count over the whole text; ties go to the lexicographically greater pair,
       compared as the tuple ``(left bytes, right bytes)``; add the merged token and replace every occurrence
       (left to right, without overlaps).

    Args:
        text: the training corpus (may be empty).
        vocab_size: the largest vocabulary, counting the 256 bytes and the special tokens; at least
            ``256 + len(special_tokens)``.
        special_tokens: strings that are always one token each, e.g. ``["<|endoftext|>"]``.

    Returns:
        ``(vocab, merges)``: ``vocab`` a list of bytes, ``vocab[i]`` the bytes of token i, in the layout in this
        module's docstring; ``merges`` the learned pairs ``(left, right)`` of bytes, in the order learned
        (``vocab[256 + len(special_tokens) + k] == left_k + right_k``).
    """
    raise NotImplementedError("train_bpe is not implemented yet")


def encode(
    vocab: list[bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str], text: str
) -> torch.Tensor:
    """The token ids of ``text``.

    Special tokens in ``text`` (longest match first) become their ids; the rest is pre-tokenized as in
    train_bpe, and the merges are applied to each pre-token's bytes: always the earliest-learned merge that
    applies, to every occurrence of its pair, until none applies.

    Args:
        vocab: ``vocab[i]`` is the bytes of token i. It holds all 256 single bytes and every special token, but
            ids need not follow train_bpe's layout (do not assume byte b has id b). If two ids have the same
            bytes, use the lower id.
        merges: pairs of bytes, in the order they were learned (each pair may arrive as a list of two bytes).
        special_tokens: the special tokens (maybe empty: then ``"<|endoftext|>"`` is ordinary text).
        text: any string, possibly empty.

    Returns:
        An int64 tensor of shape ``(N,)``; ``torch.empty(0, dtype=torch.int64)`` for no tokens.
    """
    raise NotImplementedError("encode is not implemented yet")


def encode_iterable(
    vocab: list[bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str], chunks: list[str]
) -> torch.Tensor:
    """The ids of ``"".join(chunks)``, exactly as ``encode`` gives them, however the text is cut into chunks.

    Chunks may end inside a word, a contraction, a run of spaces or a special token, and may be empty. Aim to
    encode as the chunks come (holding back only the text whose ids could still change), as a streaming
    tokenizer must for files larger than memory.

    Returns:
        An int64 tensor of shape ``(N,)``.
    """
    raise NotImplementedError("encode_iterable is not implemented yet")


def decode(vocab: list[bytes], ids: torch.Tensor) -> str:
    """The text of ``ids`` (an int64 tensor of shape ``(N,)``): the concatenated bytes of the tokens, decoded as
    UTF-8 with every invalid sequence replaced by U+FFFD (``bytes.decode("utf-8", errors="replace")``).
    ``ids`` must not be modified."""
    raise NotImplementedError("decode is not implemented yet")


def rope(
    x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0, ntk_scale: float | None = None
) -> torch.Tensor:
    """Rotary position embedding, Meta's LLaMA convention (neighbouring features form a pair).

    For a head vector of D features at position m, the pair ``(x[2i], x[2i+1])`` for ``i = 0 .. D/2 - 1`` is
    rotated by the angle ``m * theta ** (-2i / D)``:
    ``(x[2i] * cos - x[2i+1] * sin, x[2i] * sin + x[2i+1] * cos)``.

    NTK-aware scaling: with ``ntk_scale`` s (a float >= 1), use the base ``theta * s ** (D / (D - 2))`` instead
    of ``theta``; ``None`` means no scaling.

    Args:
        x: queries or keys, shape ``(B, T, H, D)`` (batch, tokens, heads, head dim), D even; float32, float16
            or bfloat16.
        positions: int64 positions, shape ``(T,)`` (the same for every row) or ``(B, T)`` (one per row).
        theta: the base.
        ntk_scale: the NTK-aware scale factor, or None.

    Returns:
        A new tensor with the shape and dtype of ``x``, computed in float32. ``x`` must not be modified.
    """
    raise NotImplementedError("rope is not implemented yet")


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Token embedding: the rows of ``weight`` picked by ``ids``.

    Args:
        ids: int64 tensor of any shape, values in ``[0, V)``.
        weight: the table, shape ``(V, C)``, float32 or bfloat16.

    Returns:
        Shape ``(*ids.shape, C)``, dtype of ``weight``; gradients must flow back to ``weight`` (rows used more
        than once get the sum). Do not call torch.nn.functional.embedding, torch.embedding or torch.nn.Embedding.
    """
    raise NotImplementedError("embedding is not implemented yet")
