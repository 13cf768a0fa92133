"""The training loop's parts, written out: loss, optimizer, learning-rate schedule, gradient clipping.

Each matches the PyTorch function a student would otherwise call (``F.cross_entropy``, ``torch.optim.AdamW``,
``torch.nn.utils.clip_grad_norm_``), and the tests hold them to it. ``finetune`` puts them together for the
fine-tuning assignment, on any model that maps tokens ``(B, T)`` to logits ``(B, T, vocab)``, with all weights
trainable or with LoRA adapters only; ``digit_task_batches`` supplies a small synthetic task to fine-tune on.
"""

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from reference_impl.lora import apply_lora, mark_only_lora_trainable

IGNORE_INDEX = -100


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean negative log-likelihood of ``targets`` ``(...)`` under ``logits`` ``(..., vocab)``.

    Positions whose target is ``ignore_index`` (a prompt, padding) count neither in the sum nor in the mean;
    if every position is ignored the result is NaN (0 / 0), as with ``F.cross_entropy``. Computed in float32
    (float64 stays float64) and returned in the logits' dtype.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits (..., vocab) and targets (...) disagree: {tuple(logits.shape)} vs {tuple(targets.shape)}"
        )
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat_logits = logits.reshape(-1, logits.shape[-1]).to(compute)  # (N, V)
    flat_targets = targets.reshape(-1)  # (N,)
    keep = flat_targets != ignore_index  # (N,)
    # log softmax(x)_t = x_t - log sum_j exp(x_j). Subtracting the row maximum first changes neither the value nor
    # the gradient (it cancels), but keeps exp from overflowing.
    shifted = flat_logits - flat_logits.amax(dim=-1, keepdim=True)  # (N, V)
    log_normaliser = shifted.exp().sum(dim=-1).log()  # (N,)
    safe_targets = torch.where(keep, flat_targets, 0)  # an ignored -100 must not be used as an index
    target_logit = shifted.gather(-1, safe_targets[:, None]).squeeze(-1)  # (N,)
    nll = torch.where(keep, log_normaliser - target_logit, 0.0)  # (N,)
    return (nll.sum() / keep.sum()).to(logits.dtype)


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019, arXiv:1711.05101), as ``torch.optim.AdamW``.

    Per parameter ``p`` with gradient ``g``, at step ``t`` (from 1):

        p   <- p * (1 - lr * weight_decay)           decay is applied to the weight, not added to the gradient
        m   <- beta1 * m + (1 - beta1) * g          first moment   (state "exp_avg")
        v   <- beta2 * v + (1 - beta2) * g^2        second moment  (state "exp_avg_sq")
        p   <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    The ``1 - beta^t`` factors undo the moments' bias towards their zero initialisation in early steps.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0:
            raise ValueError(f"learning rate must be non-negative, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be non-negative, got {eps} and {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                param.mul_(1 - lr * weight_decay)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                denominator = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                param.addcdiv_(exp_avg, denominator, value=-lr / bias_correction1)
        return loss


def cosine_schedule(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate for ``step`` (from 0): linear warm-up to ``max_lr``, then cosine decay to ``min_lr``.

    Warm-up gives steps ``0 .. warmup_steps - 1`` the rates ``max_lr * (step + 1) / warmup_steps``, so no step is
    wasted at rate 0. From ``warmup_steps`` to ``total_steps`` the rate follows half a cosine from ``max_lr`` down
    to ``min_lr``, and stays at ``min_lr`` afterwards.
    """
    if not 0 <= warmup_steps <= total_steps or total_steps <= 0:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}"
        )
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``; return the norm before.

    The global norm is the norm of the per-tensor norms. As in ``torch.nn.utils.clip_grad_norm_``, the factor is
    ``max_norm / (norm + 1e-6)`` capped at 1, so gradients already small enough are left as they are.
    """
    grads = [param.grad for param in params if param.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(grad) for grad in grads]))
    clip_coefficient = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for grad in grads:
        grad.mul_(clip_coefficient.to(grad.dtype))
    return total_norm


def finetune(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    steps: int,
    lr: float,
    lora: dict[str, Any] | None = None,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    max_grad_norm: float = 1.0,
) -> list[float]:
    """Train ``model`` for ``steps`` steps on ``(inputs, targets)`` batches; return each step's loss.

    ``inputs`` are token ids ``(B, T)``, ``targets`` the ids to predict at each position ``(B, T)``, with
    ``IGNORE_INDEX`` where nothing is to be learned. ``lora=None`` trains every parameter that requires a
    gradient; ``lora={"target_modules": ["wq", "wv"], "r": 8, "alpha": 16}`` (the arguments of ``apply_lora``)
    first adds adapters in place and then trains only them, leaving ``model`` with its adapters attached.

    AdamW with ``weight_decay`` on matrices only (norm scales and biases are not decayed), the learning rate
    following ``cosine_schedule`` from ``lr`` down to ``lr / 10``, and gradients clipped to ``max_grad_norm``.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if lora is not None:
        apply_lora(model, **lora)
        mark_only_lora_trainable(model)
    trainable = [param for param in model.parameters() if param.requires_grad]
    if not trainable:
        raise ValueError("finetune: the model has no trainable parameters")
    optimizer = AdamW(
        [
            {"params": [param for param in trainable if param.ndim >= 2], "weight_decay": weight_decay},
            {"params": [param for param in trainable if param.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    device = trainable[0].device
    model.train()
    losses = []
    batch_iterator = iter(batches)
    for step in range(steps):
        try:
            inputs, targets = next(batch_iterator)
        except StopIteration:
            raise ValueError(f"finetune: batches ran out after {step} of {steps} steps") from None
        for group in optimizer.param_groups:
            group["lr"] = cosine_schedule(
                step, max_lr=lr, min_lr=lr / 10, warmup_steps=warmup_steps, total_steps=steps
            )
        loss = cross_entropy(model(inputs.to(device)), targets.to(device))
        loss.backward()
        clip_grad_norm(trainable, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


DIGIT_TASKS = ("copy", "reverse", "increment")
SEPARATOR_TOKEN = 10  # digits are tokens 0-9; the task needs a vocabulary of at least 11 tokens


def digit_task_batches(
    task: str, *, batch_size: int, n_digits: int, seed: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """An endless stream of ``(inputs, targets)`` for a synthetic sequence task over random digits.

    Each sequence is ``d_1 .. d_n SEP a_1 .. a_n``, where the answer ``a`` is the digits themselves (``"copy"``),
    reversed (``"reverse"``), or each plus one modulo 10 (``"increment"``). ``inputs`` are the sequence without
    its last token and ``targets`` without its first (next-token prediction), both ``(batch_size, 2 * n_digits)``;
    only the answer is to be learned, so the targets of the ``n_digits`` prompt positions are ``IGNORE_INDEX``.
    """
    if task not in DIGIT_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {DIGIT_TASKS}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        digits = torch.randint(0, 10, (batch_size, n_digits), generator=generator)  # (B, n)
        if task == "copy":
            answer = digits
        elif task == "reverse":
            answer = digits.flip(-1)
        else:
            answer = (digits + 1) % 10
        separator = torch.full((batch_size, 1), SEPARATOR_TOKEN)
        sequence = torch.cat([digits, separator, answer], dim=1)  # (B, 2n + 1)
        inputs = sequence[:, :-1]  # (B, 2n)
        targets = sequence[:, 1:].clone()  # (B, 2n)
        targets[:, :n_digits] = IGNORE_INDEX
        yield inputs, targets
