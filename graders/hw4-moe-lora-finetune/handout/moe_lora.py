"""HW4: a top-k mixture of experts, LoRA, checkpoints, and LoRA fine-tuning within a time budget.

Implement every function below; each raises NotImplementedError until you do. The grader calls them with plain
values only: tensors (float32 unless a docstring says otherwise, on the CPU), ints, floats, strs, bools, None,
lists and dicts with str keys. A tuple you return arrives as a list; that is fine.

You may use torch (including torch.nn.functional and torch.optim) and safetensors. Not allowed: torch.save,
torch.load, pickle and friends (a checkpoint must not be a pickle: loading one runs code), peft and transformers.
No function may change its input tensors in place.
"""

from torch import Tensor

# -- mixture of experts --------------------------------------------------------------------------------------


def moe_forward(
    x: Tensor, router_weight: Tensor, experts: list[dict[str, Tensor]], top_k: int
) -> tuple[Tensor, Tensor]:
    """A top-k mixture of SwiGLU experts (Mixtral's feed-forward); returns ``(y, aux_loss)``.

    Args:
        x: ``(..., dim)`` float32 tokens (any number of leading dimensions).
        router_weight: ``(n_experts, dim)``; the router logits are ``x @ router_weight.T``.
        experts: ``n_experts`` dicts with ``"w1"`` ``(hidden, dim)``, ``"w2"`` ``(dim, hidden)`` and ``"w3"``
            ``(hidden, dim)`` in ``nn.Linear`` layout; expert ``e`` computes ``w2(silu(w1 x) * w3 x)``, i.e.
            ``(silu(x @ w1.T) * (x @ w3.T)) @ w2.T``.
        top_k: how many experts each token visits, ``1 <= top_k <= n_experts``.

    Routing, per token: ``p = softmax(logits)`` over all experts (in float32); keep the ``top_k`` largest
    probabilities and divide them by their sum (they sum to 1 afterwards). Equal probabilities go to the LOWER
    expert index. ``y`` is the sum of the chosen experts' outputs times these weights: shape and dtype of ``x``.

    ``aux_loss`` is Switch Transformer's load-balancing loss, a float32 scalar ``()``:
    ``n_experts * sum_i f_i * P_i``, with ``f_i`` the fraction of tokens that chose expert ``i`` (a token counts
    once for each of its ``top_k`` experts, so ``sum_i f_i = top_k``) and ``P_i`` the mean over tokens of
    ``p_i``. ``f_i`` comes from a hard choice and carries no gradient; ``P_i`` does.

    Both outputs must be differentiable (autograd) with respect to x, router_weight and every expert weight.
    """
    raise NotImplementedError("moe_forward")


# -- LoRA ----------------------------------------------------------------------------------------------------


def lora_forward(
    x: Tensor, weight: Tensor, lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int
) -> Tensor:
    """A linear layer with a LoRA update: ``x @ weight.T + (x @ lora_a.T @ lora_b.T) * (alpha / rank)``.

    Shapes: x ``(..., in_features)``, weight ``(out_features, in_features)``, lora_a ``(rank, in_features)``,
    lora_b ``(out_features, rank)``; returns ``(..., out_features)``. No bias, no dropout. Differentiable with
    respect to all four tensors.
    """
    raise NotImplementedError("lora_forward")


def lora_merge(weight: Tensor, lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int) -> Tensor:
    """The merged weight ``weight + (lora_b @ lora_a) * (alpha / rank)``: a NEW tensor, ``weight`` unchanged.

    The result has ``weight``'s shape and dtype (float32, float16 or bfloat16; the adapters have the same dtype),
    so ``x @ merged.T`` equals ``lora_forward(x, weight, ...)`` up to rounding.
    """
    raise NotImplementedError("lora_merge")


def lora_unmerge(merged_weight: Tensor, lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int) -> Tensor:
    """Undo ``lora_merge``: ``merged_weight - (lora_b @ lora_a) * (alpha / rank)``, a new tensor of its dtype."""
    raise NotImplementedError("lora_unmerge")


def adapter_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Only the adapter entries of ``state_dict``: keys whose last dot-separated part is exactly ``lora_A``
    or ``lora_B`` (``layers.0.attention.wq.lora_A``), with their tensors unchanged. Everything else (base
    weights, look-alike names) is left out.
    """
    raise NotImplementedError("adapter_state_dict")


# -- checkpoints ---------------------------------------------------------------------------------------------


def save_checkpoint(dir_name: str, model_state: dict[str, Tensor], optimizer_state: dict, step: int) -> None:
    """Write a checkpoint into the directory ``dir_name`` (relative to the working directory).

    - ``dir_name`` may contain ``/`` (``runs/exp-1/step-20``): create missing parent directories. If a
      checkpoint already exists there, replace it.
    - ``model_state``: ``{name: tensor}`` of any dtypes and shapes (0-dim and empty included); two names may
      refer to the same tensor (tied weights).
    - ``optimizer_state``: like ``torch.optim.AdamW(...).state_dict()`` with str keys:
      ``{"state": {"0": {"step": ..., "exp_avg": tensor, "exp_avg_sq": tensor}, ...},
      "param_groups": [{"lr": 0.001, "betas": [0.9, 0.999], ..., "params": [0, 1]}, ...]}``: nested dicts and
      lists of tensors, ints, floats, bools, strs and None.
    - ``step``: an int (possibly larger than 2**31).

    No pickles: store tensors with safetensors (or your own raw format) and the rest as JSON.
    """
    raise NotImplementedError("save_checkpoint")


def load_checkpoint(dir_name: str) -> dict:
    """Read the checkpoint in ``dir_name`` from disk: ``{"model_state": ..., "optimizer_state": ..., "step": ...}``.

    Everything comes back exactly as it was saved: same keys, same nesting, ints as ints and floats as floats,
    tensors bit for bit (dtype, shape, NaN and -0.0 included). A directory that holds no checkpoint raises an
    error (e.g. FileNotFoundError).
    """
    raise NotImplementedError("load_checkpoint")


# -- LoRA fine-tuning ----------------------------------------------------------------------------------------


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
    """Train LoRA adapters on a frozen base model for at most ``time_budget_s`` seconds; return the adapters.

    Args:
        base_state: the base model's weights, named as in ``tiny_llama.py`` (float32). Do not change them.
        model_args: ``{"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "norm_eps",
            "rope_theta", "max_seq_len"}``.
        train_inputs, train_targets: ``(N, T)`` int64 token ids of a next-token task; ``train_targets`` holds
            -100 where nothing is to be learned (the prompt).
        target_modules: which linear layers get adapters: a layer is adapted when its dotted name
            (``tiny_llama.linear_layer_names``) equals a target or ends with ``"." + target``: ``"wq"`` adapts
            every layer's ``attention.wq``, ``"feed_forward.w2"`` every ``w2``, ``"output"`` the output layer.
        rank, alpha: every adapted layer computes ``x @ W.T + (x @ A.T @ B.T) * (alpha / rank)``.
        time_budget_s: wall-clock seconds for the whole call, measured by the grader (data transfer included);
            return before it runs out.
        seed: for your random initialisation and batch order.

    Returns ``{"<layer name>.lora_A": (rank, in_features), "<layer name>.lora_B": (out_features, rank)}`` for
    exactly the adapted layers, float32 and finite. The grader adds them to its own copy of the base model and
    measures the loss on held-out data of the same task.
    """
    raise NotImplementedError("finetune_lora")
