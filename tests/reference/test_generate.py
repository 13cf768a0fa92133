"""Sampling rules against slow, obvious versions of themselves, and batched generation with a KV cache."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.generate import generate, sample, top_k_mask, top_p_mask
from reference_impl.model import ModelArgs, Transformer

DEBUG = ModelArgs.from_name("debug")


def random_model(seed: int = 0) -> Transformer:
    """A debug model whose logits are far apart (N(0, 0.02) makes them nearly equal), so argmax is stable."""
    torch.manual_seed(seed)
    model = Transformer(DEBUG)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 1.0 / math.sqrt(parameter.shape[1]))
            else:
                parameter.uniform_(0.5, 1.5)
    return model.eval()


def slow_top_k(logits: list[float], k: int) -> list[bool]:
    """Keep a token unless at least k tokens have a strictly larger logit."""
    return [sum(other > value for other in logits) < k for value in logits]


def slow_top_p(probs: list[float], top_p: float) -> list[bool]:
    """Keep a token if the tokens strictly more probable than it hold less than top_p between them."""
    descending = sorted(probs, reverse=True)
    keep = []
    for value in probs:
        mass_above = 0.0
        for other in descending:  # summed largest first, the order a cumulative sum over sorted probs uses
            if other > value:
                mass_above += other
        keep.append(mass_above < top_p)
    return keep


# Sampling rules

# Small integers make ties common; -inf is a token already masked out.
logit_rows = st.lists(
    st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0, float("-inf")]), min_size=1, max_size=12
)


@settings(max_examples=200, deadline=None)
@given(logits=logit_rows, k=st.integers(1, 14))
def test_top_k_mask_matches_the_slow_definition(logits: list[float], k: int) -> None:
    assert top_k_mask(torch.tensor([logits]), k)[0].tolist() == slow_top_k(logits, k)


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(0, 6), min_size=1, max_size=10).filter(any),
    numerator=st.integers(1, 60),
)
def test_top_p_mask_matches_the_slow_definition(weights: list[int], numerator: int) -> None:
    total = sum(weights)
    probs = [weight / total for weight in weights]
    # top_p values that land exactly on the cumulative sums are the ones where off-by-one errors show.
    top_p = min(numerator / total, 1.0)
    got = top_p_mask(torch.tensor([probs], dtype=torch.float64), top_p)[0].tolist()
    assert got == slow_top_p(probs, top_p)


def test_top_p_edge_values() -> None:
    probs = torch.tensor([[0.125, 0.5, 0.25, 0.125, 0.0]])
    assert top_p_mask(probs, 1e-9).tolist() == [[False, True, False, False, False]]
    assert top_p_mask(probs, 0.5).tolist() == [[False, True, False, False, False]]
    assert top_p_mask(probs, 0.5001).tolist() == [[False, True, True, False, False]]
    assert top_p_mask(probs, 0.75).tolist() == [[False, True, True, False, False]]
    # The two tokens of 0.125 tie: both stay, although 0.875 would be reached with one of them.
    assert top_p_mask(probs, 0.8).tolist() == [[True, True, True, True, False]]
    assert top_p_mask(probs, 1.0).tolist() == [[True, True, True, True, False]]
    uniform = torch.full((1, 4), 0.25)
    assert top_p_mask(uniform, 1e-9).all()


def test_top_k_edge_values() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    assert top_k_mask(logits, 1).tolist() == [[False, True, True, False]]
    assert top_k_mask(logits, 3).tolist() == [[False, True, True, True]]
    assert top_k_mask(logits, 100).all()


def test_temperature_zero_is_argmax_taking_the_lowest_id_among_ties() -> None:
    logits = torch.randn(4, 3, 50)
    assert torch.equal(sample(logits, temperature=0.0), logits.argmax(dim=-1))
    tied = torch.tensor([[0.0, 2.0, 2.0, 1.0]])
    assert sample(tied, temperature=0.0, top_k=2, top_p=0.1).tolist() == [1]


def test_sample_is_reproducible_with_a_seeded_generator() -> None:
    logits = torch.randn(8, 100)

    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.stack([sample(logits, 1.0, 20, 0.9, generator) for _ in range(5)])

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_sample_never_draws_a_token_outside_top_k_and_top_p() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).log_softmax(-1).expand(5000, 5)
    generator = torch.Generator().manual_seed(0)
    assert set(sample(logits, 1.0, top_k=3, generator=generator).tolist()) == {0, 1, 2}
    probs = logits[0].softmax(-1)
    top_p = float(probs[0] + probs[1] / 2)  # the nucleus is tokens 0 and 1
    assert set(sample(logits, 1.0, top_p=top_p, generator=generator).tolist()) == {0, 1}


def test_sample_frequencies_follow_the_tempered_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = (probs.log() * 2.0).expand(20000, 3)  # temperature 2 undoes the factor 2
    draws = sample(logits, temperature=2.0, generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=3) / draws.numel()
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)


def test_top_p_one_changes_nothing() -> None:
    logits = torch.randn(16, 30)
    plain = sample(logits, 0.7, generator=torch.Generator().manual_seed(3))
    with_top_p = sample(logits, 0.7, top_p=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, with_top_p)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_sample_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample(torch.randn(2, 5), **kwargs)


def test_sample_rejects_integer_logits() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        sample(torch.zeros(2, 5, dtype=torch.long))


# Generation


def test_batched_greedy_generation_equals_generating_each_prompt_alone() -> None:
    model = random_model()
    torch.manual_seed(1)
    prompts = [torch.randint(0, DEBUG.vocab_size, (n,)).tolist() for n in (1, 2, 5, 9, 16)]
    batched = generate(model, prompts, max_new_tokens=12, temperature=0.0)
    alone = [generate(model, [prompt], max_new_tokens=12, temperature=0.0)[0] for prompt in prompts]
    assert batched == alone
    assert all(len(tokens) == 12 for tokens in batched)


@torch.no_grad()
def test_greedy_generation_equals_an_argmax_loop_over_full_forward_passes() -> None:
    model = random_model()
    prompt = [3, 14, 15, 92, 65]
    sequence = list(prompt)
    for _ in range(10):
        sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    assert generate(model, [prompt], max_new_tokens=10, temperature=0.0) == [sequence[len(prompt) :]]


def test_seeded_sampling_is_reproducible() -> None:
    model = random_model()
    prompts = [[1, 2, 3], [4, 5]]
    first = generate(model, prompts, 16, temperature=1.0, top_k=50, top_p=0.95, seed=123)
    assert first == generate(model, prompts, 16, temperature=1.0, top_k=50, top_p=0.95, seed=123)
    assert first != generate(model, prompts, 16, temperature=1.0, top_k=50, top_p=0.95, seed=124)


def test_eos_ends_a_row_and_the_others_continue() -> None:
    model = random_model()
    prompts = [[10, 20, 30], [40, 50]]
    free = generate(model, prompts, max_new_tokens=8, temperature=0.0)
    eos_id = free[0][2]
    assert eos_id not in free[1], "pick prompts whose continuations differ"
    stopped = generate(model, prompts, max_new_tokens=8, temperature=0.0, eos_id=eos_id)
    assert stopped[0] == free[0][: free[0].index(eos_id) + 1]
    assert stopped[1] == free[1]


def test_generation_stops_when_every_row_has_ended() -> None:
    model = random_model()
    first_token = generate(model, [[7, 8, 9]], max_new_tokens=1, temperature=0.0)[0][0]
    assert generate(model, [[7, 8, 9]], max_new_tokens=20, temperature=0.0, eos_id=first_token) == [
        [first_token]
    ]


def test_zero_new_tokens_gives_empty_continuations() -> None:
    assert generate(random_model(), [[1], [2, 3]], max_new_tokens=0) == [[], []]


def test_generate_leaves_the_model_without_caches() -> None:
    model = random_model()
    generate(model, [[1, 2]], max_new_tokens=3, temperature=0.0)
    assert all(layer.attention.kv_cache is None for layer in model.layers)


@pytest.mark.parametrize(
    ("prompts", "kwargs", "message"),
    [
        ([[1] * 120], {"max_new_tokens": 9}, "max_seq_len"),
        ([], {"max_new_tokens": 1}, "non-empty"),
        ([[1], []], {"max_new_tokens": 1}, "non-empty"),
        ([[1, DEBUG.vocab_size]], {"max_new_tokens": 1}, "token ids"),
        ([[1]], {"max_new_tokens": -1}, "max_new_tokens"),
        ([[1]], {"max_new_tokens": 1, "top_p": 2.0}, "top_p"),
    ],
)
def test_generate_rejects_bad_arguments(prompts: list[list[int]], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(random_model(), prompts, **kwargs)
