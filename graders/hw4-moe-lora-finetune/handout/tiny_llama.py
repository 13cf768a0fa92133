"""A small LLaMA-style language model, written as plain functions over a state dict (provided; not graded).

``finetune_lora`` in ``moe_lora.py`` may use it: it is the very architecture the grader evaluates your adapters
on (same weight names, same RoPE convention, same grouped-query attention), so adapters trained through
``forward`` here behave the same way there. You may change it or write your own; upload it with your
submission if ``moe_lora.py`` imports it.

The model: token embedding; ``n_layers`` pre-norm blocks, each ``h = x + attention(rms_norm(x))`` then
``h + feed_forward(rms_norm(h))``; a final RMSNorm and the output projection. Weight names (all float32, in
``nn.Linear`` layout ``(out_features, in_features)``):

    tok_embeddings.weight                      (vocab_size, dim)
    layers.{i}.attention_norm.weight           (dim,)
    layers.{i}.attention.wq.weight             (n_heads * head_dim, dim)
    layers.{i}.attention.wk.weight             (n_kv_heads * head_dim, dim)
    layers.{i}.attention.wv.weight             (n_kv_heads * head_dim, dim)
    layers.{i}.attention.wo.weight             (dim, n_heads * head_dim)
    layers.{i}.ffn_norm.weight                 (dim,)
    layers.{i}.feed_forward.w1.weight          (hidden_dim, dim)      gate
    layers.{i}.feed_forward.w2.weight          (dim, hidden_dim)      down projection
    layers.{i}.feed_forward.w3.weight          (hidden_dim, dim)      up projection
    norm.weight                                (dim,)
    output.weight                              (vocab_size, dim)

RoPE pairs neighbouring features ``(2i, 2i + 1)`` of each head (Meta's convention, not Hugging Face's
``rotate_half``), with angle ``position * rope_theta ** (-2i / head_dim)``.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # targets with this value (the prompt) count in no loss
BLOCK_LINEARS = (
    "attention.wq",
    "attention.wk",
    "attention.wv",
    "attention.wo",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
)


def linear_layer_names(model_args: dict) -> list[str]:
    """The dotted name of every linear layer, e.g. ``layers.0.attention.wq``, and finally ``output``."""
    names = [f"layers.{i}.{linear}" for i in range(model_args["n_layers"]) for linear in BLOCK_LINEARS]
    return [*names, "output"]


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last dimension, computed in float32."""
    values = x.float()
    inv_rms = torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return (values * inv_rms * weight.float()).to(x.dtype)


def rope_table(head_dim: int, n_positions: int, theta: float) -> Tensor:
    """``(cos, sin)`` of every position's angle for each feature pair: ``(n_positions, head_dim // 2, 2)``."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv_freq)  # (T, D/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)  # (T, D/2, 2)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate each feature pair of ``x`` ``(B, T, heads, D)`` by its position; ``table`` is ``(T, D/2, 2)``."""
    B, T, N, D = x.shape
    pairs = x.float().reshape(B, T, N, D // 2, 2)  # (B, T, N, D/2, 2)
    cos = table[None, :, None, :, 0]  # (1, T, 1, D/2)
    sin = table[None, :, None, :, 1]
    real, imag = pairs[..., 0], pairs[..., 1]  # (B, T, N, D/2)
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)  # (B, T, N, D/2, 2)
    return rotated.reshape(B, T, N, D).type_as(x)


def linear(
    state: dict[str, Tensor],
    name: str,
    x: Tensor,
    adapters: dict[str, Tensor] | None,
    lora_scaling: float,
) -> Tensor:
    """``x W^T`` for the layer ``name``, plus ``(x A^T B^T) * lora_scaling`` where ``adapters`` has its A and B."""
    y = F.linear(x, state[f"{name}.weight"])
    if adapters is not None and f"{name}.lora_A" in adapters:
        low_rank = F.linear(x, adapters[f"{name}.lora_A"])  # (..., r)
        y = y + F.linear(low_rank, adapters[f"{name}.lora_B"]) * lora_scaling
    return y


def forward(
    state: dict[str, Tensor],
    tokens: Tensor,
    model_args: dict,
    adapters: dict[str, Tensor] | None = None,
    lora_scaling: float = 1.0,
) -> Tensor:
    """Next-token logits ``(B, T, vocab_size)`` for token ids ``tokens`` ``(B, T)`` (int64).

    ``adapters`` maps ``"<layer name>.lora_A"`` ``(r, in_features)`` and ``"<layer name>.lora_B"``
    ``(out_features, r)`` for the adapted layers; gradients flow into them (and into ``state`` wherever its
    tensors require grad).
    """
    B, T = tokens.shape
    dim, n_heads, n_kv_heads = model_args["dim"], model_args["n_heads"], model_args["n_kv_heads"]
    head_dim = dim // n_heads
    eps = model_args["norm_eps"]
    table = rope_table(head_dim, T, model_args["rope_theta"])  # (T, D/2, 2)

    h = F.embedding(tokens, state["tok_embeddings.weight"])  # (B, T, dim)
    for i in range(model_args["n_layers"]):
        prefix = f"layers.{i}"
        x = rms_norm(h, state[f"{prefix}.attention_norm.weight"], eps)
        q = linear(state, f"{prefix}.attention.wq", x, adapters, lora_scaling).view(B, T, n_heads, head_dim)
        k = linear(state, f"{prefix}.attention.wk", x, adapters, lora_scaling).view(
            B, T, n_kv_heads, head_dim
        )
        v = linear(state, f"{prefix}.attention.wv", x, adapters, lora_scaling).view(
            B, T, n_kv_heads, head_dim
        )
        q, k = apply_rope(q, table), apply_rope(k, table)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        # Query head j reads key/value head j // (n_heads // n_kv_heads).
        k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)  # (B, n_heads, T, D)
        v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, n_heads, T, D)
        attended = attended.transpose(1, 2).reshape(B, T, dim)  # (B, T, dim)
        h = h + linear(state, f"{prefix}.attention.wo", attended, adapters, lora_scaling)

        x = rms_norm(h, state[f"{prefix}.ffn_norm.weight"], eps)
        gate = F.silu(linear(state, f"{prefix}.feed_forward.w1", x, adapters, lora_scaling))
        up = linear(state, f"{prefix}.feed_forward.w3", x, adapters, lora_scaling)
        h = h + linear(state, f"{prefix}.feed_forward.w2", gate * up, adapters, lora_scaling)
    return linear(state, "output", rms_norm(h, state["norm.weight"], eps), adapters, lora_scaling)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token loss of ``logits`` ``(B, T, V)`` against ``targets`` ``(B, T)``, skipping IGNORE_INDEX."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
