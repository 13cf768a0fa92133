"""Building blocks of the LLaMA-style model from the earlier homework, given complete.

The weights arrive as a state dict with LLaMA's names (``tok_embeddings.weight``,
``layers.{i}.attention.wq.weight``, ``layers.{i}.feed_forward.w1.weight``, ``layers.{i}.attention_norm.weight``,
``layers.{i}.ffn_norm.weight``, ``norm.weight``, ``output.weight``) and the shape as a dict of ``model_args``
(``dim``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``vocab_size``, ``hidden_dim``, ``norm_eps``,
``rope_theta``, ``max_seq_len``).

Shape letters: B batch, T tokens in this call, S cache slots, C model width, H query heads, K key/value heads,
D head width (C // H), V vocabulary.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last dimension; returns ``x``'s dtype."""
    values = x.to(compute_dtype(x))
    inv_rms = torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return (values * inv_rms * weight.to(values.dtype)).to(x.dtype)


def precompute_freqs_cis(head_dim: int, end: int, theta: float = 10000.0) -> Tensor:
    """``(end, D/2, 2)`` float32 ``(cos, sin)`` of the angle ``m * theta**(-2i / D)`` for position ``m``.

    Computed in float32 exactly as the reference does, so the rotations agree bit for bit.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
    angles = torch.outer(torch.arange(end, dtype=torch.float32), inv_freq)  # (end, D/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)  # (end, D/2, 2)


def apply_rotary_emb(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Rotate the adjacent feature pairs of ``x`` ``(B, T, N, D)`` by ``freqs_cis`` ``(B or 1, T, D/2, 2)``.

    Pair ``i`` of a head, ``x[2i] + 1j * x[2i + 1]``, is multiplied by ``cos + 1j * sin`` of its position
    (Meta's LLaMA convention). Computed in float32 (float64 for float64 input); returns ``x``'s dtype.
    """
    B, T, N, D = x.shape
    compute = compute_dtype(x)
    pairs = x.to(compute).reshape(B, T, N, D // 2, 2)  # (B, T, N, D/2, 2)
    cis = freqs_cis.to(compute).reshape(-1, T, 1, D // 2, 2)  # (B or 1, T, 1, D/2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cis[..., 0], cis[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)  # (B, T, N, D/2, 2)
    return rotated.reshape(B, T, N, D).to(x.dtype)


def feed_forward(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    """SwiGLU ``w2(silu(w1 x) * w3 x)``; ``w1``, ``w3`` are ``(hidden, C)``, ``w2`` is ``(C, hidden)``."""
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def attention_weights(state_dict: dict[str, Tensor], layer: int) -> dict[str, Tensor]:
    """``{"wq", "wk", "wv", "wo"}`` of one layer, as ``attention_step`` takes them."""
    prefix = f"layers.{layer}.attention."
    return {name: state_dict[f"{prefix}{name}.weight"] for name in ("wq", "wk", "wv", "wo")}
