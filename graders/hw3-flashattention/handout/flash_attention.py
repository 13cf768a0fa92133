"""HW3: FlashAttention forward and backward in Triton.

Write the attention math as your own Triton kernels (``@triton.jit``) and launch them from the functions below.
PyTorch's attention, softmax and log-sum-exp (``F.scaled_dot_product_attention``, ``torch.softmax``,
``torch.logsumexp``, ...) are not allowed; PyTorch may allocate tensors, make them contiguous and launch kernels.
Submit this file with ``autograder submit hw3-flashattention flash_attention.py``.

Conventions (the same for every function):

- ``q`` is ``(B, H, T, D)``; ``k`` and ``v`` are ``(B, H_kv, S, D)``. ``H_kv`` divides ``H``: query head ``h``
  reads key/value head ``h // (H // H_kv)`` (grouped-query attention; ``H_kv == H`` is ordinary attention).
- ``D`` is 16, 32, 64 or 128. ``T`` and ``S`` are any lengths from 1 up, and may differ.
- The scores are ``s[i, j] = sm_scale * q_i . k_j``, with ``sm_scale = 1 / sqrt(D)`` when it is None.
- ``causal=True``: query ``i`` sees keys ``j <= i`` only, counted from the start of both sequences (the
  top-left convention of ``F.scaled_dot_product_attention(..., is_causal=True)``), also when ``T != S``.
- dtypes: float32 or bfloat16, the same for ``q``, ``k``, ``v``; outputs have the inputs' dtype, except ``lse``,
  which is always float32. Accumulate in float32. For float32 inputs ask ``tl.dot`` for IEEE products
  (``input_precision="ieee"``): the GPU's default, TF32, is not accurate enough for the tolerances.
- Inputs are on the GPU, or on the CPU when Triton runs in its interpreter (``TRITON_INTERPRET=1``, which must be
  set before Triton is first imported; the public tests' conftest.py does it for you). The interpreter cannot
  multiply bfloat16 blocks, so test bfloat16 on a GPU.
- Never modify an input tensor in place.
"""

import math

import torch
import triton
import triton.language as tl


def flash_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, sm_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention output and the log-sum-exp of every query row, by a FlashAttention forward kernel.

    Args:
        q: queries, ``(B, H, T, D)``.
        k: keys, ``(B, H_kv, S, D)``.
        v: values, ``(B, H_kv, S, D)``.
        causal: mask keys after the query (``j > i``).
        sm_scale: the score scale; None means ``1 / sqrt(D)``.

    Returns:
        ``(o, lse)``: ``o`` is ``(B, H, T, D)`` in the inputs' dtype with
        ``o_i = sum_j softmax_j(s_ij) v_j`` over the keys row ``i`` sees; ``lse`` is ``(B, H, T)`` float32 with
        ``lse_i = log(sum_j exp(s_ij))`` (natural log) over the same keys.

    Walk over blocks of keys with an online softmax (running maximum ``m``, denominator ``l`` and unnormalised
    output, rescaled by ``exp(m_old - m_new)`` whenever the maximum grows) so the ``(T, S)`` score matrix is
    never stored. Then ``o = acc / l`` and ``lse = m + log(l)``.
    """
    raise NotImplementedError("flash_attention_forward is not implemented yet")


def flash_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of the attention output with respect to ``q``, ``k`` and ``v``, by Triton kernels.

    Args:
        q, k, v, causal, sm_scale: as in :func:`flash_attention_forward`.
        o: the forward output, ``(B, H, T, D)``.
        lse: the forward log-sum-exp, ``(B, H, T)`` float32.
        do: the gradient of the loss with respect to ``o``, ``(B, H, T, D)``.

    Returns:
        ``(dq, dk, dv)`` with the shapes and dtype of ``q``, ``k``, ``v``. With grouped-query attention the
        gradient of a key/value head sums over every query head that reads it.

    Recompute ``p_ij = exp(s_ij - lse_i)`` block by block instead of storing it. With
    ``delta_i = sum_d do_id * o_id``: ``dv = P^T dO``, ``dp = dO V^T``, ``ds = p * (dp - delta)``,
    ``dq = sm_scale * dS K`` and ``dk = sm_scale * dS^T Q``.
    """
    raise NotImplementedError("flash_attention_backward is not implemented yet")


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, sm_scale: float | None = None
) -> torch.Tensor:
    """The attention output ``o`` ``(B, H, T, D)``, differentiable with torch.autograd.

    ``o.backward(do)`` must run your backward kernels: wrap the two functions above in a
    ``torch.autograd.Function`` whose ``forward`` saves what ``backward`` needs. Gradients reach ``q``, ``k`` and
    ``v`` (not ``causal`` or ``sm_scale``).
    """
    raise NotImplementedError("flash_attention is not implemented yet")


def flash_attention_forward_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step of attention, ``(o, dq, dk, dv)``: the call the leaderboard times.

    Already written for you; you may change it (fuse, reuse buffers) as long as it returns the same values.
    """
    o, lse = flash_attention_forward(q, k, v, causal, sm_scale)
    dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, causal, sm_scale)
    return o, dq, dk, dv
