"""Warm-up assignment: softmax and RMSNorm.

Implement both functions below with plain PyTorch tensor operations. Do not call torch.softmax,
torch.nn.functional.softmax, torch.nn.functional.rms_norm or torch.nn.RMSNorm: the point is to write them.
Submit this file with `autograder submit warmup warmup.py`.
"""

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``x`` along dimension ``dim``: ``exp(x) / exp(x).sum(dim, keepdim=True)``.

    Args:
        x: a floating-point tensor of any shape (float32, float16 or bfloat16).
        dim: the dimension to normalise over; negative values count from the end.

    Returns:
        A new tensor with the shape and dtype of ``x`` whose entries along ``dim`` are non-negative and sum to 1.
        It must stay finite for large logits (e.g. 1000.0) and give probability 0 to ``-inf`` entries.
        ``x`` itself must not be modified.
    """
    raise NotImplementedError("softmax is not implemented yet")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2, dim=-1, keepdim=True) + eps) * weight``.

    Args:
        x: a floating-point tensor of shape ``(..., D)``.
        weight: the learned scale, shape ``(D,)``.
        eps: added to the mean square *inside* the square root.

    Returns:
        A new tensor with the shape and dtype of ``x``. ``x`` and ``weight`` must not be modified.
    """
    raise NotImplementedError("rms_norm is not implemented yet")
