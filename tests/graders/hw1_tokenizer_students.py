"""Submissions for the hw1-tokenizer self-test: the solution with one bug planted in each, and other students."""

from pathlib import Path

HW1 = Path(__file__).resolve().parents[2] / "graders" / "hw1-tokenizer"
SOLUTION = (HW1 / "solution" / "hw1.py").read_text()
HANDOUT = (HW1 / "handout" / "hw1.py").read_text()


def planted(old: str, new: str) -> str:
    """The solution with ``old`` (which must occur exactly once) replaced by ``new``."""
    if SOLUTION.count(old) != 1:
        raise ValueError(f"the solution no longer contains exactly one {old!r}")
    return SOLUTION.replace(old, new)


# Ties broken by token ids instead of the tokens' bytes: a merged token (id >= 256) beats any single byte.
TIES_BY_ID = planted(
    "key=lambda pair: (vocab[pair[0]], vocab[pair[1]])",
    "key=lambda pair: pair",
)

# Special tokens tried in the order listed, not longest first. The public tests have no overlapping special
# tokens, so this passes them and loses only hidden tests.
SPECIAL_TOKENS_IN_LIST_ORDER = planted(
    "tokens = sorted(set(special_tokens), key=len, reverse=True)",
    "tokens = list(dict.fromkeys(special_tokens))",
)

# The right values, but the lookup is cut off from autograd, so no gradient reaches the table.
EMBEDDING_DETACHED = planted(
    "return weight[ids]",
    "return weight.detach()[ids]",
)

# Correct in every test, but returns a truncated result for the large inputs that are timed.
WRONG_WHEN_TIMED = (
    SOLUTION
    + """

_correct_train_bpe = train_bpe
_correct_encode = encode


def train_bpe(text, vocab_size, special_tokens):
    vocab, merges = _correct_train_bpe(text, vocab_size, special_tokens)
    if len(text) > 100_000:
        return vocab[:-1], merges[:-1]
    return vocab, merges


def encode(vocab, merges, special_tokens, text):
    ids = _correct_encode(vocab, merges, special_tokens, text)
    return ids[:-1] if len(text) > 100_000 else ids
"""
)
