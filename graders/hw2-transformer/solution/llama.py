"""HW2: a LLaMA-style transformer built from its parts (reference student solution; runs inside the sandbox).

Every function takes its weights explicitly and returns new tensors. Shape letters: B batch, T tokens,
S key positions, C model width, H query heads, K key/value heads, D head width, V vocabulary.
"""

import math

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision inputs are computed in float32 and rounded once at the end.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    values = x.to(_compute_dtype(x))
    # exp(x - max) / sum(exp(x - max)) equals softmax(x) and never overflows; -inf entries become 0.
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    values = x.to(_compute_dtype(x))
    inv_rms = torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return (values * inv_rms * weight.to(values.dtype)).to(x.dtype)


def swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    gate = x @ w1.T  # (..., hidden)
    value = x @ w3.T  # (..., hidden)
    return (gate * torch.sigmoid(gate) * value) @ w2.T  # (..., C)


def precompute_freqs_cis(head_dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
    angles = torch.outer(torch.arange(end, dtype=torch.float32), inv_freq)  # (end, D/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)  # (end, D/2, 2)


def _rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    B, T, N, D = x.shape
    pairs = x.to(torch.float32).reshape(B, T, N, D // 2, 2)  # neighbouring features form a complex number
    real, imag = pairs[..., 0], pairs[..., 1]  # (B, T, N, D/2)
    cos = freqs_cis[:, None, :, 0]  # (T, 1, D/2): the same rotation for every head
    sin = freqs_cis[:, None, :, 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)  # (B, T, N, D/2, 2)
    return rotated.reshape(B, T, N, D).to(x.dtype)


def apply_rotary_emb(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _rotate(xq, freqs_cis), _rotate(xk, freqs_cis)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False
) -> torch.Tensor:
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (..., T, S)
    if causal:
        if T != S:
            raise ValueError(f"causal attention needs as many queries as keys, got {T} and {S}")
        future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(diagonal=1)  # (T, S)
        scores = scores.masked_fill(future, float("-inf"))
    return softmax(scores, dim=-1) @ v  # (..., T, Dv)


def multihead_attention(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    n_heads: int,
    n_kv_heads: int,
    freqs_cis: torch.Tensor,
) -> torch.Tensor:
    B, T, _ = x.shape
    D = weights["wq"].shape[0] // n_heads
    q = (x @ weights["wq"].T).view(B, T, n_heads, D)  # (B, T, H, D)
    k = (x @ weights["wk"].T).view(B, T, n_kv_heads, D)  # (B, T, K, D)
    v = (x @ weights["wv"].T).view(B, T, n_kv_heads, D)  # (B, T, K, D)
    q, k = apply_rotary_emb(q, k, freqs_cis)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), (B, K, T, D) x2
    # Query head h reads key/value head h // (H / K): consecutive query heads share one.
    group = n_heads // n_kv_heads
    k = k.repeat_interleave(group, dim=1)  # (B, H, T, D)
    v = v.repeat_interleave(group, dim=1)  # (B, H, T, D)
    y = scaled_dot_product_attention(q, k, v, causal=True)  # (B, H, T, D)
    y = y.transpose(1, 2).reshape(B, T, n_heads * D)  # (B, T, H*D)
    return y @ weights["wo"].T  # (B, T, C)


def transformer_block(
    x: torch.Tensor, weights: dict[str, torch.Tensor], freqs_cis: torch.Tensor, args: dict
) -> torch.Tensor:
    eps = args["norm_eps"]
    attention_weights = {name: weights[f"attention.{name}.weight"] for name in ("wq", "wk", "wv", "wo")}
    normed = rms_norm(x, weights["attention_norm.weight"], eps)
    h = x + multihead_attention(normed, attention_weights, args["n_heads"], args["n_kv_heads"], freqs_cis)
    normed = rms_norm(h, weights["ffn_norm.weight"], eps)
    return h + swiglu(
        normed,
        weights["feed_forward.w1.weight"],
        weights["feed_forward.w2.weight"],
        weights["feed_forward.w3.weight"],
    )


def transformer(tokens: torch.Tensor, state_dict: dict[str, torch.Tensor], args: dict) -> torch.Tensor:
    T = tokens.shape[1]
    freqs_cis = precompute_freqs_cis(args["dim"] // args["n_heads"], T, args["rope_theta"])  # (T, D/2, 2)
    h = state_dict["tok_embeddings.weight"][tokens]  # (B, T, C)
    for layer in range(args["n_layers"]):
        prefix = f"layers.{layer}."
        weights = {
            name[len(prefix) :]: value for name, value in state_dict.items() if name.startswith(prefix)
        }
        h = transformer_block(h, weights, freqs_cis, args)
    return (
        rms_norm(h, state_dict["norm.weight"], args["norm_eps"]) @ state_dict["output.weight"].T
    )  # (B, T, V)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    flat_logits = logits.reshape(-1, logits.shape[-1]).to(_compute_dtype(logits))  # (N, V)
    flat_targets = targets.reshape(-1)  # (N,)
    keep = flat_targets != ignore_index
    shifted = flat_logits - flat_logits.amax(dim=-1, keepdim=True)
    log_normaliser = shifted.exp().sum(dim=-1).log()  # (N,)
    # An ignored target (-100) is no valid index: read class 0 instead and drop the term.
    picked = shifted.gather(-1, torch.where(keep, flat_targets, 0)[:, None]).squeeze(-1)  # (N,)
    losses = torch.where(keep, log_normaliser - picked, 0.0)
    return (losses.sum() / keep.sum()).to(logits.dtype)


def transformer_forward_backward(
    tokens: torch.Tensor, targets: torch.Tensor, state_dict: dict[str, torch.Tensor], args: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    params = {name: value.detach().requires_grad_(True) for name, value in state_dict.items()}
    loss = cross_entropy(transformer(tokens, params, args), targets)
    grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), dict(zip(params, grads, strict=True))


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
    beta1, beta2 = betas
    new_params, new_avgs, new_avg_sqs = [], [], []
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        exp_avg = beta1 * exp_avg + (1 - beta1) * grad
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
        # Bias correction undoes the pull towards the zero initial moments in the first steps.
        m_hat = exp_avg / (1 - beta1**step)
        v_hat = exp_avg_sq / (1 - beta2**step)
        # Decoupled weight decay shrinks the weight itself, not the gradient.
        new_params.append(param * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps))
        new_avgs.append(exp_avg)
        new_avg_sqs.append(exp_avg_sq)
    return new_params, new_avgs, new_avg_sqs


def lr_schedule(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
