"""A LLaMA-style decoder-only transformer: RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU.

Shape letters used in the comments:
    B batch, T tokens in this call, S key slots attended over (T without a cache, the cache length with one),
    C model width (``dim``), H query heads, K key/value heads, D head width (``dim // n_heads``), V vocabulary.

Rotary embeddings follow Meta's LLaMA convention: the D features of a head are D/2 complex numbers
``x[2i] + 1j * x[2i + 1]`` (neighbouring features form a pair), and position ``m`` multiplies pair ``i`` by
``exp(1j * m * theta**(-2i / D))``. ``freqs_cis`` stores those unit complex numbers as real ``(cos, sin)``
pairs, so ``model.to(dtype)`` can never discard an imaginary part. Hugging Face checkpoints pair feature ``i``
with feature ``i + D/2`` instead (``rotate_half``); ``hf.py`` reorders the rows of ``wq`` and ``wk`` when
loading, which gives exactly the same attention scores.

Padding: batches of prompts of different lengths are padded on the left. ``pad_lengths[b]`` says how many
padding tokens row ``b`` starts with. Those tokens are never attended to, which alone makes a prompt's result
independent of its batch. The first real token of each row also gets rotary position 0: RoPE scores depend
only on distances, so this shift changes no score, but it makes a row's rotations (and its cached keys)
exactly those of the prompt run alone, and it is what Hugging Face derives from an attention mask.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impl.functional import rms_norm
from reference_impl.kv_cache import KVCache


def llama_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """The SwiGLU width LLaMA derives from the model width.

    A plain MLP of width ``4 * dim`` has two matrices; SwiGLU has three, so LLaMA takes 2/3 of that width to
    keep the parameter count, optionally scales it, and rounds up to a multiple of ``multiple_of`` so that
    the matrix shapes suit the hardware (Llama 2 7B: 11008; Llama 3 8B with 1.3 and 1024: 14336).
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass
class ModelArgs:
    """Every number that fixes the shape and behaviour of a ``Transformer``.

    The first six fields are the network's shape and have no defaults: there is no size that is right for
    everyone. Use ``ModelArgs.from_name`` for the presets.
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads: multi-head attention; 1: multi-query; in between: grouped-query
    vocab_size: int
    hidden_dim: int  # SwiGLU width; llama_hidden_dim(dim) gives LLaMA's choice
    norm_eps: float = 1e-5  # Llama 2 and 3 (Llama 1 used 1e-6); keeps 1/rms finite for an all-zero row
    rope_theta: float = 10000.0  # the RoPE paper's base; Llama 3 uses 500000 for longer wavelengths
    rope_scaling: float | None = None  # NTK-aware context extension factor s >= 1; None: no scaling
    max_seq_len: int = 2048  # length of the rotary table; no sequence or KV cache may be longer
    tie_embeddings: bool = False  # LLaMA 1-3 keep separate input and output embeddings; small models tie them

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {getattr(self, name)}")
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}): "
                "each key/value head serves an equal group of query heads"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim ({self.head_dim}) must be even: RoPE rotates pairs of features")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.rope_scaling is not None and not (self.rope_scaling >= 1 and self.head_dim > 2):
            raise ValueError(
                f"rope_scaling must be None or a factor >= 1 with head_dim > 2, got {self.rope_scaling} "
                f"with head_dim {self.head_dim}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        """A named preset: ``debug`` (tiny, for tests on a CPU) or the shape of a published model."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])


PRESETS: dict[str, dict[str, Any]] = {
    # Two layers, width 64, grouped-query attention, a byte-sized vocabulary: a forward pass takes milliseconds.
    "debug": dict(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=256,
        hidden_dim=llama_hidden_dim(64, multiple_of=32),
        max_seq_len=128,
    ),
    # The published shapes below exist for documentation and benchmarks; build them on the meta device to
    # inspect them without allocating memory.
    "tinyllama-1.1b": dict(
        dim=2048,
        n_layers=22,
        n_heads=32,
        n_kv_heads=4,
        vocab_size=32000,
        hidden_dim=llama_hidden_dim(2048),
        max_seq_len=2048,
    ),
    "llama2-7b": dict(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        vocab_size=32000,
        hidden_dim=llama_hidden_dim(4096),
        max_seq_len=4096,
    ),
    "llama3-8b": dict(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        vocab_size=128256,
        hidden_dim=llama_hidden_dim(4096, multiple_of=1024, ffn_dim_multiplier=1.3),
        rope_theta=500000.0,
        max_seq_len=8192,
    ),
}


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last dimension, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def precompute_freqs_cis(
    dim: int, end: int, theta: float = 10000.0, rope_scaling: float | None = None
) -> Tensor:
    """The rotation of every position ``0 .. end-1`` for each of the ``dim // 2`` feature pairs of a head.

    Returns a float32 tensor of shape ``(end, dim // 2, 2)`` holding ``(cos, sin)`` of the angle
    ``m * theta**(-2i / dim)``: the real and imaginary parts of ``exp(1j * angle)``, the "cis" of the name.

    ``rope_scaling`` (NTK-aware scaling): to run a model on sequences ``s`` times longer than it was trained
    on, raise the base to ``theta * s**(dim / (dim - 2))``. The fastest pair (i = 0) keeps its frequency, so
    nearby tokens are still told apart precisely, while the slowest pair turns exactly ``s`` times slower, so
    the longer positions map onto angles the model has seen.
    """
    if dim % 2 != 0:
        raise ValueError(f"dim must be even, got {dim}")
    if rope_scaling is not None:
        theta = theta * rope_scaling ** (dim / (dim - 2))
    # Written as Hugging Face writes it (float32 arange divided by dim), so the angles agree bit for bit.
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # (D/2,)
    positions = torch.arange(end, dtype=torch.float32)  # (end,)
    angles = torch.outer(positions, inv_freq)  # (end, D/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)  # (end, D/2, 2)


def _rotate(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Multiply each feature pair of ``x`` (B, T, N, D) by the unit complex number of its position."""
    B, T, N, D = x.shape
    compute = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for a float64 model
    pairs = x.to(compute).reshape(B, T, N, D // 2, 2)  # (B, T, N, D/2, 2): (real, imag) parts
    cis = freqs_cis.to(compute).reshape(-1, T, 1, D // 2, 2)  # (B or 1, T, 1, D/2, 2): same for every head
    real, imag = pairs[..., 0], pairs[..., 1]  # (B, T, N, D/2)
    cos, sin = cis[..., 0], cis[..., 1]  # (B or 1, T, 1, D/2)
    # (real + 1j*imag) * (cos + 1j*sin) = (real*cos - imag*sin) + 1j*(real*sin + imag*cos)
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)  # (B, T, N, D/2, 2)
    return rotated.reshape(B, T, N, D).type_as(x)  # (B, T, N, D)


def apply_rotary_emb(xq: Tensor, xk: Tensor, freqs_cis: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate queries ``(B, T, H, D)`` and keys ``(B, T, K, D)`` by their positions.

    ``freqs_cis`` is ``precompute_freqs_cis(...)[positions]``: ``(T, D/2, 2)`` when every row of the batch
    sits at the same positions, ``(B, T, D/2, 2)`` when each row has its own (left padding). The arithmetic
    runs in float32 (float64 for float64 inputs) and the results come back in the inputs' dtype.
    """
    if xq.dim() != 4 or xk.dim() != 4 or xq.shape[:2] != xk.shape[:2] or xq.shape[-1] != xk.shape[-1]:
        raise ValueError(f"xq and xk must be (B, T, heads, D) with equal B, T, D; got {xq.shape}, {xk.shape}")
    B, T, _, D = xq.shape
    if freqs_cis.shape[-3:] != (T, D // 2, 2) or freqs_cis.dim() not in (3, 4):
        raise ValueError(
            f"freqs_cis must be (T, D/2, 2) or (B, T, D/2, 2) for T={T}, D={D}; got {freqs_cis.shape}"
        )
    if freqs_cis.dim() == 4 and freqs_cis.shape[0] not in (1, B):
        raise ValueError(f"freqs_cis has batch size {freqs_cis.shape[0]}, the queries {B}")
    return _rotate(xq, freqs_cis), _rotate(xk, freqs_cis)


def attention_mask(query_slots: Tensor, n_keys: int, pad_lengths: Tensor | None) -> Tensor:
    """Which key slots each query may attend to: ``(B or 1, 1, T, S)`` booleans, True where allowed.

    A query at slot ``q`` sees slots ``0 .. q`` (causality), minus the row's left padding. A padding query
    would then see nothing, and a softmax over nothing is NaN, so every query also sees its own slot; no real
    token ever sees a padding token, so the padding's (meaningless) outputs never reach a real one.
    """
    key_slots = torch.arange(n_keys, device=query_slots.device)  # (S,)
    causal = key_slots[None, :] <= query_slots[:, None]  # (T, S)
    if pad_lengths is None:
        return causal[None, None]  # (1, 1, T, S)
    not_padding = key_slots[None, :] >= pad_lengths[:, None]  # (B, S)
    itself = key_slots[None, :] == query_slots[:, None]  # (T, S)
    allowed = (causal[None] & not_padding[:, None, :]) | itself[None]  # (B, T, S)
    return allowed[:, None]  # (B, 1, T, S): the same for every head


class Attention(nn.Module):
    """Causal grouped-query self-attention: ``n_heads`` query heads share ``n_kv_heads`` key/value heads."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None  # set by Transformer.setup_caches

    def forward(self, x: Tensor, freqs_cis: Tensor, mask: Tensor | None, input_pos: Tensor | None) -> Tensor:
        """``x`` (B, T, C) -> (B, T, C).

        ``mask`` is ``attention_mask(...)``; None means plain causal attention over these T tokens.
        ``input_pos`` (T,) are the cache slots of these tokens: their keys and values are written there and
        the queries attend over the whole cache. None: no cache is read or written.
        """
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, D)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, D)
        q, k = apply_rotary_emb(q, k, freqs_cis)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), (B, K, T, D) x2

        if input_pos is not None:
            assert self.kv_cache is not None, "Transformer.forward checks that caches are set up"
            assert mask is not None, "is_causal would align the causal mask to the cache's first slot"
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, K, S, D) each

        # Query head h reads key/value head h // (H // K), the grouping Hugging Face's repeat_kv uses too.
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=1)  # (B, H, S, D)
        v = v.repeat_interleave(group, dim=1)  # (B, H, S, D)
        assert mask is None or mask.shape[-2:] == (T, k.shape[2]), (mask.shape, k.shape)

        # softmax(q k^T / sqrt(D) + mask) v, with the mask either explicit or the built-in causal one.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.wo(y)  # (B, T, C)


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``; ``w1`` is the gate, ``w3`` the value, ``w2`` projects back."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (..., hidden_dim) -> (..., dim)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``h = x + attention(norm(x))``, then ``h + feed_forward(norm(h))``."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, freqs_cis: Tensor, mask: Tensor | None, input_pos: Tensor | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, input_pos)  # (B, T, C)
        return h + self.feed_forward(self.ffn_norm(h))  # (B, T, C)


class Transformer(nn.Module):
    """Token ids ``(B, T)`` -> next-token logits ``(B, T, V)``, in the model's dtype."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Derived from args, so not saved in checkpoints (persistent=False); .to(device) still moves it.
        freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta, args.rope_scaling)
        self.register_buffer("freqs_cis", freqs_cis, persistent=False)  # (max_seq_len, D/2, 2)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # N(0, 0.02) as GPT-2 and Hugging Face's Llama; RMSNorm weights stay at 1.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def setup_caches(
        self,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Give every attention layer an empty KV cache; dtype and device default to the embeddings'."""
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(
                f"cache length {max_seq_len} exceeds the model's max_seq_len {self.args.max_seq_len}"
            )
        weight = self.tok_embeddings.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(
                max_batch_size,
                max_seq_len,
                self.args.n_kv_heads,
                self.args.head_dim,
                dtype=dtype if dtype is not None else weight.dtype,
                device=device if device is not None else weight.device,
            )

    def remove_caches(self) -> None:
        """Free the KV caches; calls with ``input_pos`` need ``setup_caches`` again afterwards."""
        for layer in self.layers:
            layer.attention.kv_cache = None

    def forward(
        self, tokens: Tensor, input_pos: Tensor | None = None, pad_lengths: Tensor | None = None
    ) -> Tensor:
        """Logits for every position of ``tokens`` (B, T).

        ``input_pos`` (T,): the KV-cache slots these tokens occupy (prefill: ``arange(T)``; decoding: the next
        slot). Needs ``setup_caches``. None: a plain forward pass over positions ``0 .. T-1``, no cache.
        ``pad_lengths`` (B,): the number of left-padding tokens (slots) at the start of each row.
        """
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"tokens must be a (B, T) integer tensor, got {tuple(tokens.shape)} {tokens.dtype}"
            )
        B, T = tokens.shape
        if input_pos is None:
            if tokens.shape[1] > self.args.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds max_seq_len {self.args.max_seq_len}")
            query_slots = torch.arange(T, device=tokens.device)  # (T,)
            n_keys = T
        else:
            n_keys = self._check_cache_call(B, T, input_pos)
            query_slots = input_pos  # (T,)

        if pad_lengths is None:
            positions = query_slots  # (T,)
            mask = None if input_pos is None else attention_mask(query_slots, n_keys, None)
        else:
            if pad_lengths.shape != (B,) or pad_lengths.dtype != torch.int64:
                raise ValueError(f"pad_lengths must be a ({B},) int64 tensor, got {tuple(pad_lengths.shape)}")
            if int(pad_lengths.min()) < 0:
                raise ValueError("pad_lengths must not be negative")
            # Each row counts positions from its first real token; padding slots get position 0 (unused).
            positions = (query_slots[None, :] - pad_lengths[:, None]).clamp(min=0)  # (B, T)
            mask = attention_mask(query_slots, n_keys, pad_lengths)  # (B, 1, T, S)
        freqs_cis = self.freqs_cis[positions]  # (T, D/2, 2) or (B, T, D/2, 2)

        h = self.tok_embeddings(tokens)  # (B, T, C)
        for layer in self.layers:
            h = layer(h, freqs_cis, mask, input_pos)  # (B, T, C)
        logits = self.output(self.norm(h))  # (B, T, V)
        assert logits.shape == (B, T, self.args.vocab_size)
        return logits

    def _check_cache_call(self, batch_size: int, n_tokens: int, input_pos: Tensor) -> int:
        """Validate a cached call; returns the cache length (the number of key slots S)."""
        cache = self.layers[0].attention.kv_cache
        if cache is None:
            raise ValueError("input_pos was given but the KV caches are not set up; call setup_caches first")
        if input_pos.shape != (n_tokens,) or input_pos.dtype != torch.int64:
            raise ValueError(f"input_pos must be a ({n_tokens},) int64 tensor, got {tuple(input_pos.shape)}")
        if int(input_pos.min()) < 0 or int(input_pos.max()) >= cache.max_seq_len:
            raise ValueError(f"input_pos must lie in [0, {cache.max_seq_len}), the cache length")
        if batch_size > cache.max_batch_size:
            raise ValueError(
                f"batch size {batch_size} exceeds the cache's max_batch_size {cache.max_batch_size}"
            )
        return cache.max_seq_len
