"""LoRA: low-rank adapters for fine-tuning a frozen model (Hu et al., 2021, arXiv:2106.09685).

A frozen linear layer ``y = x W^T + b`` gets a trainable low-rank correction:

    y = x W^T + b + (dropout(x) A^T B^T) * (alpha / r)

with ``A`` of shape ``(r, in_features)`` and ``B`` of shape ``(out_features, r)``. ``B`` starts at zero, so the
adapted model computes exactly what the base model did until the first optimizer step. ``A`` starts like an
``nn.Linear`` weight (Kaiming-uniform with ``a = sqrt(5)``), as in the original code and in Hugging Face PEFT,
whose ``lora.Linear`` layer this one matches output for output and gradient for gradient.

``LoRALinear`` adopts the base layer's ``weight`` and ``bias`` parameters under the same names, so a wrapped
model's state dict holds every key the base model's does (``layers.0.attention.wq.weight``) plus the adapter keys
(``layers.0.attention.wq.lora_A``, ``...lora_B``): a base checkpoint loads into it unchanged, and the adapters
alone are what ``lora_state_dict`` saves.
"""

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LORA_PARAMETER_NAMES = ("lora_A", "lora_B")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update scaled by ``alpha / r``.

    ``merge()`` folds the update into ``weight`` (for inference at the base layer's cost) and ``unmerge()``
    takes it out again; both are idempotent and leave the forward pass unchanged up to rounding.

    ``weight`` stays the base layer's own ``Parameter``: a module tied to it (an input embedding sharing the
    output projection) is frozen with it and, after ``merge()``, sees the merged weight too.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r = r
        self.alpha = alpha
        # alpha / r keeps the update's size roughly independent of r, so alpha need not be retuned with r.
        self.scaling = alpha / r
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> Tensor:
        """The update ``B @ A * scaling``, shaped like ``weight``: ``(out_features, in_features)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        result = F.linear(x, self.weight, self.bias)  # (..., out_features)
        if self.merged:
            return result
        low_rank = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        return result + F.linear(low_rank, self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``weight``. Dropout no longer applies afterwards: merge for inference."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from ``weight`` again, so the adapters can keep training."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha}, merged={self.merged}"
        )


def _matches(module_name: str, target_modules: Iterable[str]) -> bool:
    """``wq`` matches ``layers.0.attention.wq`` (a whole dotted suffix, not ``xwq``), as in PEFT."""
    return any(module_name == target or module_name.endswith("." + target) for target in target_modules)


def apply_lora(
    model: nn.Module, target_modules: Iterable[str], r: int, alpha: float, dropout: float = 0.0
) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` whose name ends with one of ``target_modules`` by a ``LoRALinear``.

    A target is a dotted name suffix: ``"wq"`` adapts every layer's ``attention.wq``, ``"attention.wq"`` too,
    ``"layers.0.attention.wq"`` only the first layer's. Only the wrapped layers' base weights are frozen here;
    call ``mark_only_lora_trainable`` to freeze the rest of the model (embeddings, norms) as well.
    Returns ``model`` for chaining; raises ``ValueError`` if no ``nn.Linear`` matched.
    """
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    to_wrap = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _matches(name, targets)
    ]
    if not to_wrap:
        linear_names = sorted(name for name, module in model.named_modules() if isinstance(module, nn.Linear))
        raise ValueError(
            f"apply_lora: no nn.Linear matched target_modules={targets}; the model's linear layers are "
            f"{linear_names or 'none'}"
        )
    for name in to_wrap:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(
            parent, child_name, LoRALinear(getattr(parent, child_name), r=r, alpha=alpha, dropout=dropout)
        )
    return model


def _is_lora_parameter(name: str) -> bool:
    return name.rpartition(".")[2] in LORA_PARAMETER_NAMES


def mark_only_lora_trainable(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the LoRA adapters; returns ``model``."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(_is_lora_parameter(name))
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights alone (``...lora_A`` and ``...lora_B``), detached: what a LoRA checkpoint stores."""
    return {name: tensor.detach() for name, tensor in model.state_dict().items() if _is_lora_parameter(name)}


def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Copy adapter weights into a model that ``apply_lora`` has prepared with the same targets and rank.

    The keys must be exactly the model's adapter keys and the shapes must agree; otherwise a ``ValueError``
    names the offending keys, rather than leaving some adapters silently at their initial values.
    """
    own = lora_state_dict(model)
    if not own:
        raise ValueError("load_lora_state_dict: the model has no LoRA adapters; call apply_lora first")
    missing = sorted(own.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - own.keys())
    wrong_shape = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(own[key].shape)}"
        for key in own.keys() & state_dict.keys()
        if state_dict[key].shape != own[key].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if wrong_shape:
        problems.append(f"shape mismatches {wrong_shape}")
    if problems:
        raise ValueError("load_lora_state_dict: " + "; ".join(problems))
    merged = [module for module in model.modules() if isinstance(module, LoRALinear) and module.merged]
    if merged:
        raise ValueError("load_lora_state_dict: unmerge() the adapters before loading new ones into them")
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key in own:
            parameters[key].copy_(state_dict[key])
