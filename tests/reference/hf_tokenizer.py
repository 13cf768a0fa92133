"""Hugging Face `tokenizers` built from our vocabulary and merges: the parity baseline for tests and the bench."""

from __future__ import annotations

from typing import Any

from reference_impl.tokenizer import GPT2_PRETOKEN_PATTERN, token_to_string


def hf_tokenizer(
    vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str]
) -> Any:
    """Hugging Face's byte-level BPE on our vocabulary and merges, pre-tokenized by the same regex."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    model = models.BPE(
        vocab={token_to_string(data): token_id for token_id, data in vocab.items()},
        merges=[(token_to_string(a), token_to_string(b)) for a, b in merges],
    )
    tokenizer = HFTokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT2_PRETOKEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(special_tokens)
    return tokenizer
