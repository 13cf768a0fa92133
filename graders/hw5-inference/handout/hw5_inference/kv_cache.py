"""Attention with a key/value cache, and the two phases of decoding: prefill and decode steps.  (TODO)

Cache layout: per layer, ``k`` and ``v`` of shape ``(B, K, S, D)``. Slot ``s`` of row ``b`` holds the rotated
key (and the value) of the token at cache position ``s``; keys are stored per key/value head, before they are
repeated for grouped-query attention. Prompts are left-padded: row ``b`` starts with ``pad_lengths[b]`` padding
slots, its real tokens follow, and its rotary positions count from its first real token:
``position = max(slot - pad_lengths[b], 0)`` (padding slots get position 0).

A query at slot ``q`` attends to slots ``pad_lengths[b] .. q`` (causal, padding excluded) and always to its own
slot, so a padding query sees itself and stays finite; real tokens never see padding. Slots after ``q`` (not
written yet, or stale) must never be attended to.

The model helpers you need (rms_norm, precompute_freqs_cis, apply_rotary_emb, feed_forward) are in model.py.
"""

from typing import Any

import torch
from torch import Tensor

from .model import apply_rotary_emb, attention_weights, feed_forward, precompute_freqs_cis, rms_norm


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
    """One causal grouped-query attention layer with a KV cache (no norm, no residual).

    Args:
        x: ``(B, T, C)`` input of the layer (already normalised), float32 or float64.
        weights: ``{"wq": (H*D, C), "wk": (K*D, C), "wv": (K*D, C), "wo": (C, H*D)}`` (no biases), ``x``'s dtype.
        cache_k, cache_v: ``(B, K, S, D)``, the cache before this call (slots of earlier tokens filled).
        input_pos: ``(T,)`` int64, the cache slots of the T tokens of ``x`` (consecutive).
        pad_lengths: ``(B,)`` int64, left padding of each row.
        n_heads, n_kv_heads: H and K; query head ``h`` reads key/value head ``h // (H // K)``.
        rope_theta: the RoPE base.

    Returns:
        ``(out, new_cache_k, new_cache_v)``: ``out`` ``(B, T, C)`` (``x @ ... @ wo.T``), and the caches with
        this call's rotated keys and values written at ``input_pos``. Do not modify ``cache_k``/``cache_v``
        in place: return new tensors.
    """
    raise NotImplementedError("attention_step")


def prefill(
    state_dict: dict[str, Tensor],
    model_args: dict[str, Any],
    tokens: Tensor,
    pad_lengths: Tensor,
    cache_len: int,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Run left-padded prompts through the whole model into fresh (zero) caches of ``cache_len`` slots.

    Args:
        state_dict: the model's weights (names in model.py), float32 or float64.
        model_args: ``dim, n_layers, n_heads, n_kv_heads, vocab_size, hidden_dim, norm_eps, rope_theta,
            max_seq_len``.
        tokens: ``(B, L)`` int64 token ids, left-padded (any id in the padding).
        pad_lengths: ``(B,)`` int64.
        cache_len: S, the number of slots of each cache (>= L).

    Returns:
        ``(logits, caches)``: the logits of every row's last token ``(B, V)`` in the weights' dtype, and one
        ``{"k": (B, K, S, D), "v": (B, K, S, D)}`` per layer, slots ``0 .. L-1`` filled, the rest zero.
    """
    raise NotImplementedError("prefill")


def decode_step(
    state_dict: dict[str, Tensor],
    model_args: dict[str, Any],
    caches: list[dict[str, Tensor]],
    next_tokens: Tensor,
    slot: int,
    pad_lengths: Tensor,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Feed one token per row at cache slot ``slot``.

    Args:
        caches: as ``prefill`` returns them (slots before ``slot`` filled); not modified in place.
        next_tokens: ``(B,)`` int64.
        slot: the cache slot of these tokens.

    Returns:
        ``(logits (B, V), new_caches)`` with this token's keys and values written at ``slot`` in every layer.
    """
    raise NotImplementedError("decode_step")
