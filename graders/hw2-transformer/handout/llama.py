"""HW2: a LLaMA-style transformer from its parts, and the pieces of its training loop.

Implement every function below with plain PyTorch tensor operations (matmul, exp, sum, indexing, ...). The
built-ins that would do the work for you (torch.softmax, F.scaled_dot_product_attention, F.rms_norm,
F.cross_entropy, torch.optim.AdamW, the lr schedulers, ...) are not allowed: a submission that uses them is
not run. See README.md for the full list, the tolerances and how the autograder scores your work.

Conventions (LLaMA's):
- Shape letters: B batch, T tokens, S key positions, C model width (``dim``), H query heads, K key/value heads
  (``n_kv_heads``), D head width (``dim // n_heads``), V vocabulary.
- A weight matrix has the layout of ``nn.Linear.weight``: ``(out_features, in_features)``, so a projection is
  ``x @ w.T``.
- Every input is float32 (token ids and targets int64). Return new tensors; do not modify your inputs in place
  (except in ``adamw_step``, where you may).
- The grader also back-propagates through rms_norm, swiglu, scaled_dot_product_attention, multihead_attention,
  transformer_block and cross_entropy: keep them differentiable by torch.autograd (no ``.detach()``,
  ``torch.no_grad()``, ``.item()`` or numpy in the computation), or write your own ``torch.autograd.Function``
  with a correct backward.

Submit this one file: ``autograder submit hw2-transformer llama.py``.
"""

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``x`` along ``dim``: ``exp(x) / exp(x).sum(dim, keepdim=True)``.

    Args:
        x: a float32 tensor of any shape.
        dim: the dimension to normalise over (negative values count from the end).

    Returns:
        A tensor of the shape and dtype of ``x``. It must stay finite for large logits (e.g. 1000.0) and give
        probability 0 to ``-inf`` entries (masked positions).
    """
    raise NotImplementedError("softmax is not implemented yet")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2, dim=-1, keepdim=True) + eps) * weight``.

    Args:
        x: ``(..., C)`` float32.
        weight: ``(C,)``, the learned per-feature scale.
        eps: added to the mean square *inside* the square root.

    Returns:
        ``(..., C)`` float32.
    """
    raise NotImplementedError("rms_norm is not implemented yet")


def swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """The SwiGLU feed-forward network: ``w2(silu(w1 x) * w3 x)``, with ``silu(z) = z * sigmoid(z)``.

    Args:
        x: ``(..., C)``.
        w1: ``(hidden, C)``, the gate projection.
        w2: ``(C, hidden)``, the projection back to the model width.
        w3: ``(hidden, C)``, the value projection.

    Returns:
        ``(..., C)``: ``((silu(x @ w1.T) * (x @ w3.T)) @ w2.T``.
    """
    raise NotImplementedError("swiglu is not implemented yet")


def precompute_freqs_cis(head_dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    """The rotary-embedding table: the rotation of every position ``m = 0 .. end-1`` for each feature pair.

    Feature pair ``i`` (``i = 0 .. head_dim/2 - 1``) of position ``m`` is rotated by the angle
    ``m * theta ** (-2i / head_dim)``. Compute the angles in float32.

    Args:
        head_dim: D, the width of one head (even).
        end: the number of positions.
        theta: the base of the frequencies (10000 in LLaMA 2, 500000 in LLaMA 3).

    Returns:
        ``(end, head_dim // 2, 2)`` float32: ``[..., 0]`` is the cosine and ``[..., 1]`` the sine of each angle.
    """
    raise NotImplementedError("precompute_freqs_cis is not implemented yet")


def apply_rotary_emb(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by their positions (RoPE), in Meta's LLaMA layout.

    The D features of a head form D/2 pairs of NEIGHBOURING features, ``(x[2i], x[2i+1])``, read as the complex
    number ``x[2i] + 1j * x[2i+1]``; token ``t`` multiplies pair ``i`` by ``cos + 1j * sin`` from
    ``freqs_cis[t, i]``. That is, with ``(a, b) = (x[2i], x[2i+1])``:
    ``(a * cos - b * sin, a * sin + b * cos)``. (Hugging Face pairs feature ``i`` with ``i + D/2`` instead:
    that is NOT this layout.)

    Args:
        xq: ``(B, T, H, D)`` queries.
        xk: ``(B, T, K, D)`` keys.
        freqs_cis: ``(T, D/2, 2)``, the table rows of these T tokens' positions (not necessarily 0 .. T-1:
            use the rows you are given).

    Returns:
        ``(xq_rotated, xk_rotated)`` with the shapes of ``xq`` and ``xk``.
    """
    raise NotImplementedError("apply_rotary_emb is not implemented yet")


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False
) -> torch.Tensor:
    """``softmax(q @ k^T / sqrt(D)) @ v``, optionally with a causal mask.

    Args:
        q: ``(..., T, D)`` queries, e.g. ``(B, H, T, D)``.
        k: ``(..., S, D)`` keys (the same leading dimensions as ``q``).
        v: ``(..., S, Dv)`` values.
        causal: if True, query ``t`` attends only to keys ``0 .. t`` (then ``T == S``).

    Returns:
        ``(..., T, Dv)``. Scores in the hundreds must not overflow.
    """
    raise NotImplementedError("scaled_dot_product_attention is not implemented yet")


def multihead_attention(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    n_heads: int,
    n_kv_heads: int,
    freqs_cis: torch.Tensor,
) -> torch.Tensor:
    """Causal grouped-query self-attention with RoPE (one LLaMA attention layer, without a KV cache).

    ``q = x @ wq.T`` split into H heads, ``k = x @ wk.T`` and ``v = x @ wv.T`` into K heads; rotate q and k with
    ``apply_rotary_emb``; query head ``h`` attends with key/value head ``h // (H // K)`` (consecutive query heads
    share one key/value head, as ``repeat_interleave`` gives); causal attention per head; concatenate the heads
    and project with ``wo``.

    Args:
        x: ``(B, T, C)``.
        weights: ``{"wq": (H*D, C), "wk": (K*D, C), "wv": (K*D, C), "wo": (C, H*D)}``.
        n_heads: H. n_kv_heads: K (divides H; K == H is multi-head, K == 1 multi-query attention).
        freqs_cis: ``(T, D/2, 2)``, the rotary table of positions ``0 .. T-1``.

    Returns:
        ``(B, T, C)``.
    """
    raise NotImplementedError("multihead_attention is not implemented yet")


def transformer_block(
    x: torch.Tensor, weights: dict[str, torch.Tensor], freqs_cis: torch.Tensor, args: dict
) -> torch.Tensor:
    """One pre-norm decoder block: ``h = x + attention(rms_norm(x))``, then ``h + swiglu(rms_norm(h))``.

    Args:
        x: ``(B, T, C)``.
        weights: the block's weights under LLaMA's names (a layer's entries of the state dict, without the
            ``layers.<i>.`` prefix): ``"attention_norm.weight"`` (C,), ``"attention.wq.weight"``,
            ``"attention.wk.weight"``, ``"attention.wv.weight"``, ``"attention.wo.weight"``,
            ``"ffn_norm.weight"`` (C,), ``"feed_forward.w1.weight"``, ``"feed_forward.w2.weight"``,
            ``"feed_forward.w3.weight"``.
        freqs_cis: ``(T, D/2, 2)``.
        args: the model arguments (see ``transformer``); the block uses ``n_heads``, ``n_kv_heads`` and
            ``norm_eps`` (the eps of both RMSNorms).

    Returns:
        ``(B, T, C)``.
    """
    raise NotImplementedError("transformer_block is not implemented yet")


def transformer(tokens: torch.Tensor, state_dict: dict[str, torch.Tensor], args: dict) -> torch.Tensor:
    """The whole model: token ids to next-token logits.

    ``h = tok_embeddings[tokens]``; ``n_layers`` blocks (positions ``0 .. T-1``, the rotary table from
    ``head_dim = dim // n_heads`` and ``rope_theta``); ``logits = rms_norm(h, norm.weight) @ output.weight.T``.

    Args:
        tokens: ``(B, T)`` int64 token ids.
        state_dict: every weight under LLaMA's names: ``"tok_embeddings.weight"`` (V, C);
            ``"layers.<i>.<name>"`` for ``i = 0 .. n_layers-1`` and each ``<name>`` of ``transformer_block``;
            ``"norm.weight"`` (C,); ``"output.weight"`` (V, C).
        args: ``{"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "norm_eps",
            "rope_theta", "max_seq_len"}`` (ints, and floats for ``norm_eps`` and ``rope_theta``).

    Returns:
        ``(B, T, V)`` float32 logits.
    """
    raise NotImplementedError("transformer is not implemented yet")


def transformer_forward_backward(
    tokens: torch.Tensor, targets: torch.Tensor, state_dict: dict[str, torch.Tensor], args: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step's forward and backward pass: the loss and the gradient of every weight.

    ``loss = cross_entropy(transformer(tokens, state_dict, args), targets)``. This is the function the
    leaderboard times (write it as fast as you can: a hand-written backward pass is welcome).

    Args:
        tokens: ``(B, T)`` int64. targets: ``(B, T)`` int64, the token to predict at each position.
        state_dict, args: as in ``transformer``.

    Returns:
        ``(loss, grads)``: ``loss`` a 0-dim float32 tensor; ``grads`` a dict with exactly the keys of
        ``state_dict``, each gradient of the shape of its weight.
    """
    raise NotImplementedError("transformer_forward_backward is not implemented yet")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    Args:
        logits: ``(..., V)``, e.g. ``(N, V)`` or ``(B, T, V)``.
        targets: ``(...)`` int64 class ids (the leading shape of ``logits``).
        ignore_index: positions whose target equals it count neither in the sum nor in the mean.

    Returns:
        A 0-dim float32 tensor. It must stay finite for logits in the thousands.
    """
    raise NotImplementedError("cross_entropy is not implemented yet")


def adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """One AdamW step (decoupled weight decay, as ``torch.optim.AdamW``) for each parameter ``p`` with gradient
    ``g`` and moments ``m`` (exp_avg), ``v`` (exp_avg_sq)::

        p <- p * (1 - lr * weight_decay)
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g**2
        p <- p - lr * (m / (1 - beta1**step)) / (sqrt(v / (1 - beta2**step)) + eps)

    Args:
        params, grads, exp_avgs, exp_avg_sqs: lists of equally long tensors (the moments are zeros before the
            first step).
        step: the number of this step, counting from 1 (the bias corrections use it).
        lr, betas, eps, weight_decay: as in torch.optim.AdamW.

    Returns:
        ``(new_params, new_exp_avgs, new_exp_avg_sqs)``, three lists in the order of the inputs. You may update
        the input tensors in place and return them.
    """
    raise NotImplementedError("adamw_step is not implemented yet")


def lr_schedule(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of ``step`` (counting from 0): linear warm-up, then cosine decay.

    - ``step < warmup_steps``: ``max_lr * (step + 1) / warmup_steps`` (so step 0 does not waste a step at 0);
    - ``warmup_steps <= step < total_steps``: ``min_lr + 0.5 * (1 + cos(pi * p)) * (max_lr - min_lr)`` with
      ``p = (step - warmup_steps) / (total_steps - warmup_steps)``;
    - ``step >= total_steps``: ``min_lr``.

    Returns:
        A Python float.
    """
    raise NotImplementedError("lr_schedule is not implemented yet")
