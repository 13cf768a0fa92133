"""LoRA adapters: parity with Hugging Face PEFT, merging, freezing, adapter-only state dicts."""

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from reference_impl.lora import (
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_state_dict,
    mark_only_lora_trainable,
)


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = (self.wq(x) @ self.wk(x).transpose(-1, -2)).softmax(-1)  # (B, T, T)
        return self.wo(scores @ self.wv(x))


class TinyBlockModel(nn.Module):
    """LLaMA's module names on a toy network, so targeting by name suffix is exercised as on the real model."""

    def __init__(self, vocab: int = 17, dim: int = 8) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.attention = Attention(dim)
        self.norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, vocab, bias=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        return self.output(self.norm(h + self.attention(h)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_matches_peft_lora_outputs_and_gradients() -> None:
    r, alpha = 4, 12
    base = TinyBlockModel()
    ours = apply_lora(copy.deepcopy(base), ["wq", "output"], r=r, alpha=alpha)
    theirs = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=r, lora_alpha=alpha, target_modules=["wq", "output"], lora_dropout=0.0),
    )
    for name in ("attention.wq", "output"):
        peft_layer = theirs.base_model.model.get_submodule(name)
        our_layer = ours.get_submodule(name)
        with torch.no_grad():
            # PEFT starts B at zero; random B makes the comparison see the low-rank path.
            peft_layer.lora_B["default"].weight.normal_()
            our_layer.lora_A.copy_(peft_layer.lora_A["default"].weight)
            our_layer.lora_B.copy_(peft_layer.lora_B["default"].weight)

    x = torch.randn(2, 5, 8)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours = ours.output(ours.attention(x_ours))
    y_theirs = theirs.base_model.model.output(theirs.base_model.model.attention(x_theirs))
    torch.testing.assert_close(y_ours, y_theirs)

    upstream = torch.randn_like(y_ours)
    y_ours.backward(upstream)
    y_theirs.backward(upstream)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad)
    for name in ("attention.wq", "output"):
        peft_layer = theirs.base_model.model.get_submodule(name)
        our_layer = ours.get_submodule(name)
        torch.testing.assert_close(our_layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad)
        torch.testing.assert_close(our_layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad)


def test_initialisation_is_kaiming_uniform_a_and_zero_b() -> None:
    base = nn.Linear(10, 6)
    torch.manual_seed(123)
    layer = LoRALinear(base, r=3, alpha=6)
    torch.manual_seed(123)
    expected_a = nn.init.kaiming_uniform_(torch.empty(3, 10), a=math.sqrt(5))
    torch.testing.assert_close(layer.lora_A.detach(), expected_a, rtol=0, atol=0)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.scaling == 2.0


def test_fresh_adapter_leaves_the_output_unchanged() -> None:
    base = nn.Linear(10, 6)
    x = torch.randn(4, 10)
    expected = base(x)
    torch.testing.assert_close(LoRALinear(base, r=2, alpha=4)(x), expected, rtol=0, atol=0)


def test_base_weights_are_frozen_and_shared() -> None:
    base = nn.Linear(10, 6)
    layer = LoRALinear(base, r=2, alpha=4)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_merge_keeps_the_forward_and_unmerge_restores_the_weight() -> None:
    layer = LoRALinear(nn.Linear(10, 6), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    original_weight = layer.weight.detach().clone()
    x = torch.randn(3, 10)
    unmerged_output = layer(x)

    layer.merge()
    layer.merge()  # idempotent: the update is added once
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged_output)
    torch.testing.assert_close(layer.weight.detach(), original_weight + layer.delta_weight().detach())

    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.weight.detach(), original_weight)
    torch.testing.assert_close(layer(x), unmerged_output)


def test_dropout_applies_to_the_adapter_input_in_training_only() -> None:
    layer = LoRALinear(nn.Linear(10, 6), r=2, alpha=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(64, 10)
    layer.eval()
    without_dropout = layer(x)
    layer.train()
    assert not torch.allclose(layer(x), without_dropout)


def test_apply_lora_replaces_only_linears_matching_a_name_suffix() -> None:
    model = apply_lora(TinyBlockModel(), ["wq", "wv"], r=2, alpha=4)
    wrapped = sorted(name for name, module in model.named_modules() if isinstance(module, LoRALinear))
    assert wrapped == ["attention.wq", "attention.wv"]
    assert isinstance(model.attention.wk, nn.Linear)


def test_apply_lora_target_is_a_whole_dotted_suffix() -> None:
    model = TinyBlockModel()
    with pytest.raises(ValueError, match=r"no nn.Linear matched target_modules=\['q'\].*attention\.wq"):
        apply_lora(model, ["q"], r=2, alpha=4)


def test_apply_lora_keeps_the_base_state_dict_keys() -> None:
    base = TinyBlockModel()
    model = apply_lora(copy.deepcopy(base), ["wq", "wk", "wv", "wo", "output"], r=2, alpha=4)
    model_keys = set(model.state_dict())
    base_keys = set(base.state_dict())
    assert base_keys <= model_keys
    assert all(key.endswith((".lora_A", ".lora_B")) for key in model_keys - base_keys)
    model.load_state_dict(base.state_dict(), strict=False)


def test_mark_only_lora_trainable() -> None:
    model = mark_only_lora_trainable(apply_lora(TinyBlockModel(), ["wq", "output"], r=2, alpha=4))
    trainable = sorted(name for name, param in model.named_parameters() if param.requires_grad)
    assert trainable == ["attention.wq.lora_A", "attention.wq.lora_B", "output.lora_A", "output.lora_B"]


def test_only_adapters_receive_gradients() -> None:
    model = mark_only_lora_trainable(apply_lora(TinyBlockModel(), ["wq", "wv"], r=2, alpha=4))
    model(torch.randint(0, 17, (2, 5))).sum().backward()
    with_grad = sorted(name for name, param in model.named_parameters() if param.grad is not None)
    assert with_grad == [
        "attention.wq.lora_A",
        "attention.wq.lora_B",
        "attention.wv.lora_A",
        "attention.wv.lora_B",
    ]


def test_lora_state_dict_holds_only_adapter_weights() -> None:
    model = apply_lora(TinyBlockModel(), ["wq", "wo"], r=3, alpha=4)
    state = lora_state_dict(model)
    assert sorted(state) == [
        "attention.wo.lora_A",
        "attention.wo.lora_B",
        "attention.wq.lora_A",
        "attention.wq.lora_B",
    ]
    assert state["attention.wq.lora_A"].shape == (3, 8)
    assert state["attention.wq.lora_B"].shape == (8, 3)


def test_load_lora_state_dict_round_trip() -> None:
    base = TinyBlockModel()
    trained = apply_lora(copy.deepcopy(base), ["wq", "wo"], r=3, alpha=4)
    with torch.no_grad():
        for param in lora_state_dict(trained).values():
            param.normal_()
    fresh = apply_lora(copy.deepcopy(base), ["wq", "wo"], r=3, alpha=4)
    load_lora_state_dict(fresh, {key: value.clone() for key, value in lora_state_dict(trained).items()})
    tokens = torch.randint(0, 17, (2, 5))
    torch.testing.assert_close(fresh(tokens), trained(tokens), rtol=0, atol=0)


def test_load_lora_state_dict_names_missing_and_unexpected_keys() -> None:
    source = lora_state_dict(apply_lora(TinyBlockModel(), ["wq", "wv"], r=3, alpha=4))
    target = apply_lora(TinyBlockModel(), ["wq", "wo"], r=3, alpha=4)
    with pytest.raises(
        ValueError, match=r"missing keys \['attention\.wo\.lora_A'.*unexpected keys \['attention\.wv"
    ):
        load_lora_state_dict(target, source)


def test_load_lora_state_dict_names_shape_mismatches() -> None:
    source = lora_state_dict(apply_lora(TinyBlockModel(), ["wq"], r=3, alpha=4))
    target = apply_lora(TinyBlockModel(), ["wq"], r=2, alpha=4)
    with pytest.raises(ValueError, match=r"attention\.wq\.lora_A: checkpoint \(3, 8\), model \(2, 8\)"):
        load_lora_state_dict(target, source)
