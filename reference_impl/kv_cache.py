"""The key/value cache that makes decoding one token cost one token's work.

Without a cache, generating token ``t+1`` runs the whole prefix through the model again. The keys and values
of earlier tokens never change (attention is causal), so each attention layer keeps them in a ``KVCache``
and only the new tokens are computed.

Layout: ``k_cache`` and ``v_cache`` are ``(max_batch_size, n_kv_heads, max_seq_len, head_dim)``, i.e.
``(B, K, S, D)``, the layout ``scaled_dot_product_attention`` reads, so decoding needs no transpose. Slot ``s``
of row ``b`` holds the (already rotated) key and the value of the token that occupied cache position ``s``
in that row. Keys are stored per key/value head, before they are repeated for grouped-query attention,
which is what makes grouped-query attention's cache ``n_heads / n_kv_heads`` times smaller.

Both buffers are allocated once, up front: no reallocation while decoding, and a fixed shape that compilers
and CUDA graphs can capture. They are non-persistent (never saved in a checkpoint) and take their dtype and
device from the arguments only.
"""

import torch
from torch import Tensor, nn


class KVCache(nn.Module):
    def __init__(
        self,
        max_batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("max_batch_size", max_batch_size),
            ("max_seq_len", max_seq_len),
            ("n_kv_heads", n_kv_heads),
            ("head_dim", head_dim),
        ):
            if value < 1:
                raise ValueError(f"KVCache {name} must be a positive integer, got {value}")
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        shape = (max_batch_size, n_kv_heads, max_seq_len, head_dim)  # (B, K, S, D)
        # Zeros, not torch.empty: slots not written yet are masked out of attention, but a masked slot still
        # enters the weighted sum with weight 0, and 0 * NaN (possible in uninitialised memory) is NaN.
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k`` and ``v`` ``(B, K, T, D)`` at slots ``input_pos`` ``(T,)``; return the whole cache.

        Returns ``(k_all, v_all)``, each ``(B, K, max_seq_len, D)``: views of the first ``B`` rows of the
        buffers, including slots not written yet (zeros or stale values); the caller's attention mask decides
        which slots count.
        """
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"k and v must both be (B, K, T, D), got {tuple(k.shape)} and {tuple(v.shape)}")
        batch_size, n_heads, n_tokens, width = k.shape  # (B, K, T, D)
        if batch_size > self.max_batch_size or n_heads != self.n_kv_heads or width != self.head_dim:
            raise ValueError(
                f"k is {tuple(k.shape)}; this cache holds at most {self.max_batch_size} rows of "
                f"{self.n_kv_heads} heads of width {self.head_dim}"
            )
        if k.dtype != self.k_cache.dtype or v.dtype != self.k_cache.dtype:
            raise ValueError(f"the cache stores {self.k_cache.dtype}, got k {k.dtype} and v {v.dtype}")
        if input_pos.shape != (n_tokens,) or input_pos.dtype != torch.int64:
            raise ValueError(f"input_pos must be a ({n_tokens},) int64 tensor, got {tuple(input_pos.shape)}")
        if n_tokens > 0 and (int(input_pos.min()) < 0 or int(input_pos.max()) >= self.max_seq_len):
            raise ValueError(f"input_pos must lie in [0, {self.max_seq_len}), the cache length")

        self.k_cache[:batch_size, :, input_pos] = k  # slot input_pos[t] <- token t, for every row and head
        self.v_cache[:batch_size, :, input_pos] = v
        return self.k_cache[:batch_size], self.v_cache[:batch_size]  # (B, K, S, D) each
