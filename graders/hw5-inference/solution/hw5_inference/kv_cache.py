"""Attention with a key/value cache, and the two phases of decoding: prefill and decode steps.

Cache layout: per layer, ``k`` and ``v`` of shape ``(B, K, S, D)``. Slot ``s`` of row ``b`` holds the rotated
key (and the value) of the token at cache position ``s``. Prompts are left-padded: row ``b`` starts with
``pad_lengths[b]`` padding slots, its real tokens follow, and its rotary positions count from its first real
token (padding slots get position 0).

A query at slot ``q`` attends to slots ``pad_lengths[b] .. q`` (causal, padding excluded) and always to its own
slot, so a padding query sees itself and stays finite; real tokens never see padding.
"""

import math
from typing import Any

import torch
from torch import Tensor

from .model import apply_rotary_emb, attention_weights, feed_forward, precompute_freqs_cis, rms_norm


def attention_mask(input_pos: Tensor, n_slots: int, pad_lengths: Tensor) -> Tensor:
    """``(B, T, S)`` booleans, True where query ``t`` of row ``b`` may attend to slot ``s``."""
    slots = torch.arange(n_slots, device=input_pos.device)  # (S,)
    causal = slots[None, :] <= input_pos[:, None]  # (T, S)
    not_padding = slots[None, :] >= pad_lengths[:, None]  # (B, S)
    itself = slots[None, :] == input_pos[:, None]  # (T, S)
    return (causal[None] & not_padding[:, None, :]) | itself[None]  # (B, T, S)


def attend_in_place(
    x: Tensor,
    weights: dict[str, Tensor],
    cache_k: Tensor,
    cache_v: Tensor,
    input_pos: Tensor,
    pad_lengths: Tensor,
    n_heads: int,
    n_kv_heads: int,
    rope_theta: float,
) -> Tensor:
    """Attention of ``x`` (B, T, C) over the cache; writes this call's keys and values into the cache."""
    B, T, C = x.shape
    D = C // n_heads
    S = cache_k.shape[2]
    q = (x @ weights["wq"].T).view(B, T, n_heads, D)  # (B, T, H, D)
    k = (x @ weights["wk"].T).view(B, T, n_kv_heads, D)  # (B, T, K, D)
    v = (x @ weights["wv"].T).view(B, T, n_kv_heads, D)  # (B, T, K, D)
    positions = (input_pos[None, :] - pad_lengths[:, None]).clamp(min=0)  # (B, T)
    freqs_cis = precompute_freqs_cis(D, S, rope_theta).to(x.device)[positions]  # (B, T, D/2, 2)
    q = apply_rotary_emb(q, freqs_cis).transpose(1, 2)  # (B, H, T, D)
    k = apply_rotary_emb(k, freqs_cis).transpose(1, 2)  # (B, K, T, D)
    cache_k[:, :, input_pos] = k.to(cache_k.dtype)
    cache_v[:, :, input_pos] = v.transpose(1, 2).to(cache_v.dtype)

    group = n_heads // n_kv_heads  # query head h reads key/value head h // group
    keys = cache_k.repeat_interleave(group, dim=1)  # (B, H, S, D)
    values = cache_v.repeat_interleave(group, dim=1)  # (B, H, S, D)
    scores = (q @ keys.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, S)
    allowed = attention_mask(input_pos, S, pad_lengths)[:, None]  # (B, 1, T, S)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = (probs @ values).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
    return out @ weights["wo"].T


def attention_step(
    x: Tensor,
    weights: dict[str, Tensor],
    cache_k: Tensor,
    cache_v: Tensor,
    input_pos: Tensor,
    pad_lengths: Tensor,
    n_heads: int,
    n_kv_heads: int,
    rope_theta: float = 10000.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """One attention layer with a KV cache; returns ``(out (B, T, C), new cache_k, new cache_v)``."""
    new_k, new_v = cache_k.clone(), cache_v.clone()
    out = attend_in_place(x, weights, new_k, new_v, input_pos, pad_lengths, n_heads, n_kv_heads, rope_theta)
    return out, new_k, new_v


def forward_in_place(
    state_dict: dict[str, Tensor],
    model_args: dict[str, Any],
    tokens: Tensor,
    input_pos: Tensor,
    pad_lengths: Tensor,
    caches: list[dict[str, Tensor]],
) -> Tensor:
    """Logits ``(B, T, V)`` of ``tokens`` (B, T) at cache slots ``input_pos``; updates ``caches`` in place."""
    eps = model_args["norm_eps"]
    h = state_dict["tok_embeddings.weight"][tokens]  # (B, T, C)
    for layer, cache in enumerate(caches):
        prefix = f"layers.{layer}."
        h = h + attend_in_place(
            rms_norm(h, state_dict[prefix + "attention_norm.weight"], eps),
            attention_weights(state_dict, layer),
            cache["k"],
            cache["v"],
            input_pos,
            pad_lengths,
            model_args["n_heads"],
            model_args["n_kv_heads"],
            model_args["rope_theta"],
        )
        h = h + feed_forward(
            rms_norm(h, state_dict[prefix + "ffn_norm.weight"], eps),
            state_dict[prefix + "feed_forward.w1.weight"],
            state_dict[prefix + "feed_forward.w2.weight"],
            state_dict[prefix + "feed_forward.w3.weight"],
        )
    return rms_norm(h, state_dict["norm.weight"], eps) @ state_dict["output.weight"].T  # (B, T, V)


def empty_caches(
    state_dict: dict[str, Tensor], model_args: dict[str, Any], batch_size: int, cache_len: int
) -> list[dict[str, Tensor]]:
    """Zero-filled caches, one ``{"k", "v"}`` of ``(B, K, S, D)`` per layer, in the weights' dtype."""
    weight = state_dict["tok_embeddings.weight"]
    head_dim = model_args["dim"] // model_args["n_heads"]
    shape = (batch_size, model_args["n_kv_heads"], cache_len, head_dim)
    return [
        {"k": weight.new_zeros(shape), "v": weight.new_zeros(shape)} for _ in range(model_args["n_layers"])
    ]


@torch.no_grad()
def prefill(
    state_dict: dict[str, Tensor],
    model_args: dict[str, Any],
    tokens: Tensor,
    pad_lengths: Tensor,
    cache_len: int,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Run left-padded prompts ``(B, L)`` through the model into fresh caches of ``cache_len`` slots.

    Returns the logits of each row's last token ``(B, V)`` and the caches (slots ``0 .. L-1`` filled).
    """
    caches = empty_caches(state_dict, model_args, tokens.shape[0], cache_len)
    input_pos = torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
    logits = forward_in_place(state_dict, model_args, tokens, input_pos, pad_lengths, caches)
    return logits[:, -1], caches


@torch.no_grad()
def decode_step(
    state_dict: dict[str, Tensor],
    model_args: dict[str, Any],
    caches: list[dict[str, Tensor]],
    next_tokens: Tensor,
    slot: int,
    pad_lengths: Tensor,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Feed one token per row ``(B,)`` at cache slot ``slot``; returns ``(logits (B, V), new caches)``."""
    new_caches = [{"k": cache["k"].clone(), "v": cache["v"].clone()} for cache in caches]
    input_pos = torch.tensor([slot], device=next_tokens.device)  # (1,)
    logits = forward_in_place(
        state_dict, model_args, next_tokens[:, None], input_pos, pad_lengths, new_caches
    )
    return logits[:, -1], new_caches
