"""Batched generation: left-pad the prompts, prefill once, then one decode step per new token.  (TODO)"""

from typing import Any

import torch
from torch import Tensor


def generate(
    state_dict: dict[str, Tensor],
    model_args: dict[str, Any],
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """Continue every prompt by up to ``max_new_tokens`` tokens; returns only the new tokens of each.

    Args:
        state_dict, model_args: the model (see model.py).
        prompts: B non-empty lists of token ids, of different lengths (ragged).
        max_new_tokens: >= 0; the longest prompt plus this fits in ``model_args["max_seq_len"]``.
        temperature, top_k, top_p: as for ``sample``; ``temperature == 0`` (the default) is greedy.
        eos_id: a row stops right after it produces this token (which ends its list); the others go on.
        seed: makes sampled generation repeatable.

    Returns:
        B lists of int token ids. Under greedy decoding they must equal, token for token, what the model
        gives for each prompt alone: a prompt's result must not depend on the prompts batched with it.
        Use the KV cache: prefill all prompts at once (left-padded), then one decode step per token.
    """
    raise NotImplementedError("generate")
