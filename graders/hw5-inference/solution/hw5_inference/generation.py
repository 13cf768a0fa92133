"""Batched generation: left-pad the prompts, prefill once, then one decode step per new token."""

from typing import Any

import torch
from torch import Tensor

from .kv_cache import empty_caches, forward_in_place
from .sampling import sample


@torch.no_grad()
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

    A row stops after producing ``eos_id`` (kept as its last token). ``temperature == 0`` is greedy.
    """
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    device = state_dict["tok_embeddings.weight"].device
    prompt_len = max(len(prompt) for prompt in prompts)
    pad_lengths = torch.tensor([prompt_len - len(prompt) for prompt in prompts], device=device)  # (B,)
    tokens = torch.tensor([[0] * (prompt_len - len(p)) + list(p) for p in prompts], device=device)  # (B, L)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    caches = empty_caches(state_dict, model_args, len(prompts), prompt_len + max_new_tokens)

    input_pos = torch.arange(prompt_len, device=device)  # (L,)
    logits = forward_in_place(state_dict, model_args, tokens, input_pos, pad_lengths, caches)[:, -1]  # (B, V)
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    for step in range(max_new_tokens):
        next_tokens = sample(logits, temperature, top_k, top_p, generator=generator)  # (B,)
        for row, token in enumerate(next_tokens.tolist()):
            if not finished[row]:
                outputs[row].append(token)
                finished[row] = token == eos_id
        if all(finished) or step == max_new_tokens - 1:
            break
        slot = torch.tensor([prompt_len + step], device=device)  # (1,)
        logits = forward_in_place(state_dict, model_args, next_tokens[:, None], slot, pad_lengths, caches)[
            :, -1
        ]
    return outputs
