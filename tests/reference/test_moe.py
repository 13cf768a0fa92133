"""Mixture of experts: dispatch against a per-token loop and Hugging Face Mixtral, routing, auxiliary loss."""

import pytest
import torch
import torch.nn.functional as F
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func

from reference_impl.moe import MoE, load_balancing_loss, route

DIM, HIDDEN, N_EXPERTS = 8, 12, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def slow_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """One token at a time, straight from the definition, sorting experts in Python with ties to the lower index."""
    tokens = x.reshape(-1, x.shape[-1])
    outputs = []
    for token in tokens:
        probs = torch.softmax(moe.gate.weight.float() @ token.float(), dim=-1)
        ranked = sorted(range(moe.n_experts), key=lambda expert: (-probs[expert].item(), expert))
        chosen = ranked[: moe.top_k]
        total = sum(probs[expert] for expert in chosen)
        output = torch.zeros_like(token)
        for expert_index in chosen:
            expert = moe.experts[expert_index]
            swiglu = expert.w2.weight @ (F.silu(expert.w1.weight @ token) * (expert.w3.weight @ token))
            output = output + probs[expert_index] / total * swiglu
        outputs.append(output)
    return torch.stack(outputs).reshape(x.shape)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_output_matches_a_loop_over_tokens(top_k: int) -> None:
    moe = MoE(DIM, HIDDEN, N_EXPERTS, top_k)
    x = torch.randn(3, 7, DIM)
    y, _ = moe(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, slow_moe(moe, x))


def test_output_matches_transformers_mixtral_block() -> None:
    moe = MoE(DIM, HIDDEN, N_EXPERTS, top_k=2)
    config = MixtralConfig(
        hidden_size=DIM, intermediate_size=HIDDEN, num_local_experts=N_EXPERTS, num_experts_per_tok=2
    )
    config._experts_implementation = "eager"
    mixtral = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        mixtral.gate.weight.copy_(moe.gate.weight)
        for index, expert in enumerate(moe.experts):
            # Mixtral stacks the gate (our w1) and up (our w3) projections; down is our w2.
            mixtral.experts.gate_up_proj[index].copy_(torch.cat([expert.w1.weight, expert.w3.weight]))
            mixtral.experts.down_proj[index].copy_(expert.w2.weight)
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(moe(x)[0], mixtral(x))


def test_aux_loss_matches_a_hand_computation() -> None:
    moe = MoE(DIM, HIDDEN, N_EXPERTS, top_k=2)
    x = torch.randn(10, DIM)
    _, aux = moe(x)

    probs = torch.softmax(x @ moe.gate.weight.T, dim=-1)  # (10, E)
    tokens_sent = [0] * N_EXPERTS
    for row in probs.tolist():
        first, second = sorted(range(N_EXPERTS), key=lambda expert: (-row[expert], expert))[:2]
        tokens_sent[first] += 1
        tokens_sent[second] += 1
    expected = N_EXPERTS * sum(tokens_sent[i] / 10 * probs[:, i].mean().item() for i in range(N_EXPERTS))
    assert aux.item() == pytest.approx(expected, rel=1e-6)


def test_aux_loss_matches_transformers_load_balancing_loss() -> None:
    logits = torch.randn(32, N_EXPERTS)
    probs, _, experts = route(logits, top_k=2)
    expected = load_balancing_loss_func((logits,), num_experts=N_EXPERTS, top_k=2)
    torch.testing.assert_close(load_balancing_loss(probs, experts), expected)


def test_aux_loss_of_perfectly_balanced_routing_is_top_k() -> None:
    # Four tokens, each preferring a different pair of experts equally often, with uniform mean probability.
    logits = torch.tensor(
        [[2.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 0.0, 2.0]]
    )
    probs, _, experts = route(logits, top_k=2)
    assert load_balancing_loss(probs, experts).item() == pytest.approx(2.0)


def test_ties_go_to_the_lower_expert_index() -> None:
    logits = torch.tensor([[0.5, 3.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    _, weights, experts = route(logits, top_k=2)
    assert experts.tolist() == [[1, 3], [0, 1]]
    torch.testing.assert_close(weights, torch.full((2, 2), 0.5))


def test_tied_router_sends_every_token_to_the_first_experts() -> None:
    moe = MoE(DIM, HIDDEN, N_EXPERTS, top_k=2)
    with torch.no_grad():
        moe.gate.weight.zero_()
    x = torch.randn(4, 6, DIM)
    y, _ = moe(x)
    expected = 0.5 * moe.experts[0](x) + 0.5 * moe.experts[1](x)
    torch.testing.assert_close(y, expected)


def test_gradients_reach_the_router_and_every_expert() -> None:
    moe = MoE(DIM, HIDDEN, N_EXPERTS, top_k=2)
    x = torch.randn(4, 16, DIM, requires_grad=True)
    y, aux = moe(x)
    (y.square().sum() + aux).backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    for expert in moe.experts:
        for param in expert.parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_router_learns_from_the_output_when_top_k_is_above_one() -> None:
    moe = MoE(DIM, HIDDEN, N_EXPERTS, top_k=2)
    y, _ = moe(torch.randn(16, DIM))
    y.square().sum().backward()
    assert moe.gate.weight.grad.abs().sum() > 0


def test_aux_loss_alone_gives_the_router_a_gradient() -> None:
    moe = MoE(DIM, HIDDEN, N_EXPERTS, top_k=1)
    _, aux = moe(torch.randn(16, DIM))
    aux.backward()
    assert moe.gate.weight.grad.abs().sum() > 0
    assert all(param.grad is None for param in moe.experts.parameters())


def test_experts_nobody_chose_get_no_gradient() -> None:
    moe = MoE(DIM, HIDDEN, N_EXPERTS, top_k=1)
    with torch.no_grad():
        moe.gate.weight.zero_()  # every token ties, so every token goes to expert 0
    y, _ = moe(torch.randn(8, DIM))
    y.sum().backward()
    assert moe.experts[0].w1.weight.grad.abs().sum() > 0
    for index in range(1, N_EXPERTS):
        grad = moe.experts[index].w1.weight.grad
        assert grad is None or torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("top_k", [0, N_EXPERTS + 1])
def test_rejects_top_k_outside_one_to_n_experts(top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k must be between 1 and n_experts"):
        MoE(DIM, HIDDEN, N_EXPERTS, top_k)


def test_rejects_inputs_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"MoE expects inputs of shape \(\.\.\., 8\)"):
        MoE(DIM, HIDDEN, N_EXPERTS, top_k=2)(torch.randn(3, DIM + 1))
