"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus) sampling.  (TODO)"""

import torch
from torch import Tensor


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """The tokens top-k sampling keeps.

    Args:
        logits: ``(..., V)`` floating point.
        top_k: k >= 1; k larger than V keeps everything.

    Returns:
        A bool tensor of ``logits``'s shape: True for every token whose logit is at least the k-th largest of
        its row. Tokens tied with the k-th largest are all kept (then more than k survive).
    """
    raise NotImplementedError("top_k_filter")


def top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """The tokens nucleus (top-p) sampling keeps.

    Args:
        probs: ``(..., V)`` probabilities, each row summing to 1.
        top_p: in (0, 1].

    Returns:
        A bool tensor of ``probs``'s shape. Sort a row from most to least probable: a token is kept when the
        tokens ranked above it hold less than ``top_p`` probability between them. So the most probable token is
        always kept, and the kept set is the smallest prefix whose mass reaches ``top_p``. Tokens tied with
        the least probable kept token are kept too, whatever order the sort put them in.
    """
    raise NotImplementedError("top_p_filter")


def sample(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Tensor:
    """One token id per row of ``logits`` ``(..., V)``; returns int64 of shape ``(...)``.

    ``temperature == 0``: greedy, the argmax of each row (the lowest id among equal maxima); top_k and top_p are
    then ignored and nothing random happens. Otherwise, in this order: divide the logits by the temperature
    (in float32 at least), keep the top k (``top_k_filter``; the others get probability 0), softmax, keep the
    nucleus (``top_p_filter``, when top_p is given and < 1), renormalise, and draw one token per row.

    ``seed``: with a seed, the same call returns the same tokens (e.g. draw with a
    ``torch.Generator().manual_seed(seed)``); without one, use torch's global random state.
    """
    raise NotImplementedError("sample")
