"""Public tests for HW4: run `python -m pytest -q test_public.py` next to moe_lora.py and tiny_llama.py.

They compare your functions with short, slow, obviously-correct definitions written here in plain torch. The
grader's hidden tests use other shapes and seeds and add edge cases (see README.md).
"""

import math
import time

import pytest
import tiny_llama
import torch
import torch.nn.functional as F
from moe_lora import (
    adapter_state_dict,
    finetune_lora,
    load_checkpoint,
    lora_forward,
    lora_merge,
    lora_unmerge,
    moe_forward,
    save_checkpoint,
)

# -- mixture of experts --------------------------------------------------------------------------------------


def moe_by_loop(x, router_weight, experts, top_k):
    """One token at a time, straight from the definition (slow, but easy to trust)."""
    tokens = x.reshape(-1, x.shape[-1])
    n_experts = router_weight.shape[0]
    probs = torch.softmax(tokens @ router_weight.T, dim=-1)
    outputs, routed = [], torch.zeros(n_experts)
    for token, p in zip(tokens, probs, strict=True):
        # Largest probability first; among equal probabilities the lower expert index first.
        chosen = sorted(range(n_experts), key=lambda e: (-p[e].item(), e))[:top_k]
        total = sum(p[e] for e in chosen)
        out = torch.zeros_like(token)
        for e in chosen:
            w = experts[e]
            out = out + (p[e] / total) * ((F.silu(token @ w["w1"].T) * (token @ w["w3"].T)) @ w["w2"].T)
            routed[e] += 1
        outputs.append(out)
    aux = n_experts * ((routed / len(tokens)) * probs.mean(dim=0)).sum()
    return torch.stack(outputs).reshape(x.shape), aux


def make_experts(n_experts, dim, hidden, generator):
    def randn(*shape, fan_in):
        return torch.randn(*shape, generator=generator) / math.sqrt(fan_in)

    return [
        {
            "w1": randn(hidden, dim, fan_in=dim),
            "w2": randn(dim, hidden, fan_in=hidden),
            "w3": randn(hidden, dim, fan_in=dim),
        }
        for _ in range(n_experts)
    ]


@pytest.mark.parametrize(
    ("shape", "n_experts", "top_k"), [((6, 8), 4, 2), ((2, 5, 12), 3, 1), ((4, 8), 4, 4)]
)
def test_moe_matches_a_per_token_loop(shape, n_experts, top_k):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    router_weight = torch.randn(n_experts, shape[-1], generator=generator)
    experts = make_experts(n_experts, shape[-1], 16, generator)
    y, aux = moe_forward(x, router_weight, experts, top_k)
    expected_y, expected_aux = moe_by_loop(x, router_weight, experts, top_k)
    torch.testing.assert_close(y, expected_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(aux, expected_aux, rtol=1e-4, atol=1e-5)
    assert aux.shape == () and aux.dtype == torch.float32


def test_moe_all_experts_tied_go_to_the_lowest_indices():
    # A zero router gives every expert the same probability: each token picks experts 0 .. top_k-1, so
    # f = (1, 1, 0, 0), P = (1/4, ...) and the load-balancing loss is exactly top_k.
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 8, generator=generator)
    experts = make_experts(4, 8, 16, generator)
    y, aux = moe_forward(x, torch.zeros(4, 8), experts, 2)
    expected_y, _ = moe_by_loop(x, torch.zeros(4, 8), experts, 2)
    torch.testing.assert_close(y, expected_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(aux, torch.tensor(2.0))


def test_moe_gradients_match_the_loop():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(6, 8, generator=generator)
    router_weight = torch.randn(4, 8, generator=generator)
    experts = make_experts(4, 8, 16, generator)

    def gradients(function):
        leaves = [x.clone().requires_grad_(), router_weight.clone().requires_grad_()]
        leaf_experts = [
            {name: w.clone().requires_grad_() for name, w in expert.items()} for expert in experts
        ]
        y, aux = function(leaves[0], leaves[1], leaf_experts, 2)
        (y.square().sum() + 0.5 * aux).backward()
        return [leaves[0].grad, leaves[1].grad] + [w.grad for e in leaf_experts for w in e.values()]

    for got, expected in zip(gradients(moe_forward), gradients(moe_by_loop), strict=True):
        assert got is not None, "moe_forward must be differentiable with respect to every input"
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# -- LoRA ----------------------------------------------------------------------------------------------------


def lora_weights(in_features=16, out_features=12, rank=4, seed=3):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) / math.sqrt(in_features)
    lora_a = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)
    lora_b = torch.randn(out_features, rank, generator=generator) * 0.1
    return weight, lora_a, lora_b


def test_lora_forward_matches_the_formula():
    weight, lora_a, lora_b = lora_weights()
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(4))
    expected = x @ weight.T + (x @ lora_a.T @ lora_b.T) * (8.0 / 4)
    torch.testing.assert_close(lora_forward(x, weight, lora_a, lora_b, 8.0, 4), expected)


def test_lora_merge_and_unmerge_round_trip_without_touching_the_weight():
    weight, lora_a, lora_b = lora_weights()
    original = weight.clone()
    merged = lora_merge(weight, lora_a, lora_b, 8.0, 4)
    assert torch.equal(weight, original), "lora_merge must return a new tensor, not change weight in place"
    torch.testing.assert_close(merged, weight + lora_b @ lora_a * 2.0)
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x @ merged.T, lora_forward(x, weight, lora_a, lora_b, 8.0, 4))
    torch.testing.assert_close(lora_unmerge(merged, lora_a, lora_b, 8.0, 4), weight)


def test_adapter_state_dict_keeps_only_the_adapters():
    state = {
        "layers.0.attention.wq.weight": torch.randn(4, 4),
        "layers.0.attention.wq.lora_A": torch.randn(2, 4),
        "layers.0.attention.wq.lora_B": torch.randn(4, 2),
        "norm.weight": torch.ones(4),
    }
    adapters = adapter_state_dict(state)
    assert set(adapters) == {"layers.0.attention.wq.lora_A", "layers.0.attention.wq.lora_B"}
    assert all(torch.equal(adapters[key], state[key]) for key in adapters)


# -- checkpoints ---------------------------------------------------------------------------------------------


def assert_same(actual, expected, where="checkpoint"):
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), where
        assert torch.equal(actual.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), where
        for index, (got, item) in enumerate(zip(actual, expected, strict=True)):
            assert_same(got, item, f"{where}[{index}]")
    else:
        assert type(actual) is type(expected) and actual == expected, where


def test_checkpoint_round_trip_is_bit_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the grader saves into your working directory, too
    generator = torch.Generator().manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    model_state = {**model.state_dict(), "counts": torch.arange(5), "half": torch.randn(3).to(torch.bfloat16)}
    # Shaped like torch.optim.AdamW(model.parameters()).state_dict() after two steps, with str keys.
    optimizer_state = {
        "state": {
            str(index): {
                "step": torch.tensor(2.0),
                "exp_avg": torch.randn(parameter.shape, generator=generator),
                "exp_avg_sq": torch.rand(parameter.shape, generator=generator),
            }
            for index, parameter in enumerate(model.parameters())
        },
        "param_groups": [
            {
                "lr": 0.001,
                "betas": (0.9, 0.999),
                "eps": 1e-08,
                "weight_decay": 0.01,
                "amsgrad": False,
                "foreach": None,
                "maximize": False,
                "params": [0, 1, 2, 3],
            }
        ],
    }

    save_checkpoint("ckpt/step-2", model_state, optimizer_state, 2)
    loaded = load_checkpoint("ckpt/step-2")
    assert set(loaded) == {"model_state", "optimizer_state", "step"}
    assert_same(loaded["step"], 2)
    assert_same(loaded["model_state"], model_state)
    assert_same(loaded["optimizer_state"], optimizer_state)


# -- LoRA fine-tuning ----------------------------------------------------------------------------------------

MODEL_ARGS = {
    "dim": 32,
    "n_layers": 2,
    "n_heads": 2,
    "n_kv_heads": 1,
    "vocab_size": 16,
    "hidden_dim": 64,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_seq_len": 32,
}
ALL_LINEARS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"]


def increment_task(n_digits, count, generator):
    """``d_1 .. d_n 10 a_1 .. a_n`` with ``a_i = (d_i + 1) % 10``: next-token inputs and targets (prompt: -100)."""
    numbers = torch.randperm(10**n_digits, generator=generator)[:count]
    digits = numbers[:, None] // 10 ** torch.arange(n_digits - 1, -1, -1) % 10
    sequences = torch.cat([digits, torch.full((count, 1), 10), (digits + 1) % 10], dim=1)
    targets = sequences[:, 1:].clone()
    targets[:, :n_digits] = tiny_llama.IGNORE_INDEX
    return sequences[:, :-1].contiguous(), targets


def random_base(generator):
    names = [f"{name}.weight" for name in tiny_llama.linear_layer_names(MODEL_ARGS)]
    dim, vocab, hidden = MODEL_ARGS["dim"], MODEL_ARGS["vocab_size"], MODEL_ARGS["hidden_dim"]
    kv = MODEL_ARGS["n_kv_heads"] * dim // MODEL_ARGS["n_heads"]
    shapes = {"wq": (dim, dim), "wk": (kv, dim), "wv": (kv, dim), "wo": (dim, dim), "w1": (hidden, dim)}
    shapes |= {"w2": (dim, hidden), "w3": (hidden, dim), "output": (vocab, dim)}
    state = {name: torch.randn(*shapes[name.split(".")[-2]], generator=generator) * 0.02 for name in names}
    state["tok_embeddings.weight"] = torch.randn(vocab, dim, generator=generator) * 0.02
    state["norm.weight"] = torch.ones(dim)
    for i in range(MODEL_ARGS["n_layers"]):
        state[f"layers.{i}.attention_norm.weight"] = torch.ones(dim)
        state[f"layers.{i}.ffn_norm.weight"] = torch.ones(dim)
    return state


def test_finetune_lora_learns_increment_within_the_budget():
    generator = torch.Generator().manual_seed(6)
    base = random_base(generator)
    original = {key: value.clone() for key, value in base.items()}
    inputs, targets = increment_task(5, 4096 + 512, generator)
    budget = 8.0
    started = time.perf_counter()
    adapters = finetune_lora(
        base,
        MODEL_ARGS,
        inputs[:4096],
        targets[:4096],
        target_modules=ALL_LINEARS,
        rank=8,
        alpha=16.0,
        time_budget_s=budget,
        seed=0,
    )
    elapsed = time.perf_counter() - started
    assert elapsed <= budget, f"finetune_lora took {elapsed:.1f} s with a {budget} s budget"
    assert all(torch.equal(base[key], original[key]) for key in base), "the base weights must stay unchanged"
    layers = tiny_llama.linear_layer_names(MODEL_ARGS)
    assert set(adapters) == {f"{layer}.lora_{part}" for layer in layers for part in "AB"}
    assert adapters["output.lora_A"].shape == (8, 32) and adapters["output.lora_B"].shape == (16, 8)
    with torch.no_grad():
        logits = tiny_llama.forward(base, inputs[4096:], MODEL_ARGS, adapters, lora_scaling=16.0 / 8)
        heldout_loss = tiny_llama.cross_entropy(logits, targets[4096:]).item()
    assert heldout_loss < 0.05, f"held-out loss {heldout_loss:.3f}; the grader asks for less than 0.05"
