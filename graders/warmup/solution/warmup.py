"""Warm-up assignment: a reference student solution (self-contained; it runs inside the sandbox)."""

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision inputs are computed in float32 and rounded once at the end.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    values = x.to(_compute_dtype(x))
    # exp(x - max) / sum(exp(x - max)) equals softmax(x) and never overflows.
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    values = x.to(_compute_dtype(x))
    inv_rms = torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (values * inv_rms * weight.to(values.dtype)).to(x.dtype)
