"""HW4 reference solution: top-k MoE, LoRA, checkpoints without pickle, LoRA fine-tuning in a time budget."""

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from tiny_llama import cross_entropy, forward, linear_layer_names
from torch import Tensor

# -- mixture of experts --------------------------------------------------------------------------------------


def _swiglu(x: Tensor, expert: dict[str, Tensor]) -> Tensor:
    return F.linear(F.silu(F.linear(x, expert["w1"])) * F.linear(x, expert["w3"]), expert["w2"])


def moe_forward(
    x: Tensor, router_weight: Tensor, experts: list[dict[str, Tensor]], top_k: int
) -> tuple[Tensor, Tensor]:
    dim = x.shape[-1]
    n_experts = router_weight.shape[0]
    if not 1 <= top_k <= n_experts or len(experts) != n_experts:
        raise ValueError(f"need 1 <= top_k <= {n_experts} experts, got top_k={top_k}, {len(experts)} experts")
    tokens = x.reshape(-1, dim)  # (N, D)
    probs = torch.softmax(F.linear(tokens, router_weight).float(), dim=-1)  # (N, E)
    # A stable descending sort keeps the lower expert index first among equal probabilities.
    sorted_probs, sorted_experts = probs.sort(dim=-1, descending=True, stable=True)  # (N, E)
    top_probs, chosen = sorted_probs[:, :top_k], sorted_experts[:, :top_k]  # (N, K)
    weights = top_probs / top_probs.sum(dim=-1, keepdim=True)  # (N, K)

    y = torch.zeros_like(tokens)  # (N, D)
    for index, expert in enumerate(experts):
        token_ids, slots = (chosen == index).nonzero(as_tuple=True)  # (n_e,), (n_e,)
        if token_ids.numel() == 0:
            continue
        out = _swiglu(tokens[token_ids], expert)  # (n_e, D)
        y = y.index_add(0, token_ids, out * weights[token_ids, slots, None].to(out.dtype))

    # Switch's load-balancing loss: n_experts * sum_i f_i * P_i; f_i (hard counts) carries no gradient.
    routed = torch.bincount(chosen.reshape(-1), minlength=n_experts).to(probs.dtype)  # (E,)
    fraction_routed = routed / tokens.shape[0]  # (E,)
    aux_loss = n_experts * (fraction_routed * probs.mean(dim=0)).sum()
    return y.reshape(x.shape), aux_loss


# -- LoRA ----------------------------------------------------------------------------------------------------

ADAPTER_NAMES = ("lora_A", "lora_B")


def _check_rank(lora_a: Tensor, lora_b: Tensor, rank: int) -> None:
    if lora_a.shape[0] != rank or lora_b.shape[1] != rank:
        raise ValueError(
            f"rank {rank} does not match lora_a {tuple(lora_a.shape)}, lora_b {tuple(lora_b.shape)}"
        )


def lora_forward(
    x: Tensor, weight: Tensor, lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int
) -> Tensor:
    _check_rank(lora_a, lora_b, rank)
    low_rank = F.linear(x, lora_a)  # (..., r)
    return F.linear(x, weight) + F.linear(low_rank, lora_b) * (alpha / rank)


def _delta(lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int) -> Tensor:
    _check_rank(lora_a, lora_b, rank)
    return (lora_b @ lora_a) * (alpha / rank)  # (out, in)


def lora_merge(weight: Tensor, lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int) -> Tensor:
    return weight + _delta(lora_a, lora_b, alpha, rank).to(weight.dtype)


def lora_unmerge(merged_weight: Tensor, lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int) -> Tensor:
    return merged_weight - _delta(lora_a, lora_b, alpha, rank).to(merged_weight.dtype)


def adapter_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value for key, value in state_dict.items() if key.rpartition(".")[2] in ADAPTER_NAMES}


# -- checkpoints ---------------------------------------------------------------------------------------------

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "checkpoint.json"


def _encode(value: object, tensors: dict[str, Tensor]) -> dict:
    """A JSON tree with every node tagged by its kind; tensors go to ``tensors`` under generated names."""
    if isinstance(value, Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().contiguous().clone()  # a copy each: safetensors refuses shared memory
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": {str(key): _encode(item, tensors) for key, item in value.items()}}
    if isinstance(value, list | tuple):
        return {"list": [_encode(item, tensors) for item in value]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"cannot save a {type(value).__name__} in a checkpoint")


def _decode(node: dict, tensors: dict[str, Tensor]) -> object:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "dict" in node:
        return {key: _decode(item, tensors) for key, item in node["dict"].items()}
    if "list" in node:
        return [_decode(item, tensors) for item in node["list"]]
    return node["value"]


def save_checkpoint(dir_name: str, model_state: dict[str, Tensor], optimizer_state: dict, step: int) -> None:
    path = Path(dir_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_tensors = {key: value.detach().contiguous().clone() for key, value in model_state.items()}
    optimizer_tensors: dict[str, Tensor] = {}
    meta = {"format": 1, "step": int(step), "optimizer": _encode(optimizer_state, optimizer_tensors)}
    # Written next to its destination and renamed into place: a crash never leaves half a checkpoint behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        safetensors.torch.save_file(model_tensors, staging / MODEL_FILE)
        safetensors.torch.save_file(optimizer_tensors, staging / OPTIMIZER_FILE)
        (staging / META_FILE).write_text(json.dumps(meta))
        if path.exists():
            retired = staging.with_name(staging.name + ".old")
            os.rename(path, retired)
            os.rename(staging, path)
            shutil.rmtree(retired)
        else:
            os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_checkpoint(dir_name: str) -> dict:
    path = Path(dir_name)
    meta = json.loads((path / META_FILE).read_text())
    model_state = safetensors.torch.load_file(path / MODEL_FILE)
    optimizer_tensors = safetensors.torch.load_file(path / OPTIMIZER_FILE)
    return {
        "model_state": model_state,
        "optimizer_state": _decode(meta["optimizer"], optimizer_tensors),
        "step": meta["step"],
    }


# -- LoRA fine-tuning ----------------------------------------------------------------------------------------

BATCH_SIZE = 32
LEARNING_RATE = 1e-2
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
WARMUP_STEPS = 10
MAX_GRAD_NORM = 1.0
# Stop this long before the budget runs out: the adapters still have to travel back to the grader.
SAFETY_MARGIN_S = 0.3
# Smoothed training loss at which further steps buy little on held-out data: stop early, leave the CPU free.
CONVERGED_LOSS = 5e-3


def _targets_match(layer: str, target_modules: list[str]) -> bool:
    return any(layer == target or layer.endswith("." + target) for target in target_modules)


def _init_adapters(
    frozen: dict[str, Tensor], layers: list[str], rank: int, generator: torch.Generator
) -> dict[str, Tensor]:
    adapters = {}
    for layer in layers:
        out_features, in_features = frozen[f"{layer}.weight"].shape
        # A as nn.Linear initialises its weight (Kaiming-uniform with a = sqrt(5)); B at zero, so training
        # starts from exactly the base model.
        bound = 1.0 / math.sqrt(in_features)
        lora_a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        adapters[f"{layer}.lora_A"] = lora_a.requires_grad_()
        adapters[f"{layer}.lora_B"] = torch.zeros(out_features, rank, requires_grad=True)
    return adapters


@torch.no_grad()
def _adamw_step(parameters: list[Tensor], moments: list[tuple[Tensor, Tensor]], step: int, lr: float) -> None:
    """One Adam step (no weight decay) after clipping the gradients' global norm to MAX_GRAD_NORM.

    Written out rather than torch.optim.AdamW: the first torch.optim optimizer a process creates imports
    torch._dynamo, seconds of the time budget.
    """
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
    clip = min(1.0, MAX_GRAD_NORM / (float(norm) + 1e-6))
    beta1, beta2 = BETAS
    correction1 = 1 - beta1**step
    correction2 = 1 - beta2**step
    for parameter, (exp_avg, exp_avg_sq) in zip(parameters, moments, strict=True):
        grad = parameter.grad * clip
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (exp_avg_sq / correction2).sqrt_().add_(ADAM_EPS)
        parameter.addcdiv_(exp_avg, denominator, value=-lr / correction1)
        parameter.grad = None


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The model is tiny: each op costs more in thread hand-offs than in arithmetic, so one thread is fastest,
    and it keeps its speed when other processes compete for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def finetune_lora(
    base_state: dict[str, Tensor],
    model_args: dict,
    train_inputs: Tensor,
    train_targets: Tensor,
    *,
    target_modules: list[str],
    rank: int,
    alpha: float,
    time_budget_s: float,
    seed: int = 0,
) -> dict[str, Tensor]:
    started = time.perf_counter()
    deadline = started + time_budget_s - SAFETY_MARGIN_S
    generator = torch.Generator().manual_seed(seed)
    frozen = {key: value.detach() for key, value in base_state.items()}
    layers = [name for name in linear_layer_names(model_args) if _targets_match(name, target_modules)]
    if not layers:
        raise ValueError(f"no linear layer matches target_modules={target_modules}")
    adapters = _init_adapters(frozen, layers, rank, generator)
    parameters = list(adapters.values())
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in parameters]
    scaling = alpha / rank

    smoothed_loss = math.inf
    step = 0
    step_time = 0.0
    with _one_thread():
        while smoothed_loss > CONVERGED_LOSS:
            now = time.perf_counter()
            if now + 1.5 * step_time > deadline:
                break
            # Linear warm-up over a few steps, then a cosine decay to a tenth over the budget's wall-clock time.
            progress = min(1.0, (now - started) / max(deadline - started, 1e-9))
            warmup = min(1.0, (step + 1) / WARMUP_STEPS)
            lr = LEARNING_RATE * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

            batch = torch.randint(0, train_inputs.shape[0], (BATCH_SIZE,), generator=generator)
            logits = forward(frozen, train_inputs[batch], model_args, adapters, scaling)
            loss = cross_entropy(logits, train_targets[batch])
            loss.backward()
            step += 1
            _adamw_step(parameters, moments, step, lr)

            value = loss.item()
            smoothed_loss = value if step == 1 else 0.9 * smoothed_loss + 0.1 * value
            step_time = time.perf_counter() - now
    return {key: value.detach().clone() for key, value in adapters.items()}
