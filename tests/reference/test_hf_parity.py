"""Parity with Hugging Face's Llama: tiny random-init models, loaded through reference_impl.hf, must give the
same logits and the same greedy continuations; RMSNorm, RoPE and SwiGLU must match HF's modules."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from reference_impl.generate import generate
from reference_impl.hf import args_from_hf_config, load_hf_llama_state_dict
from reference_impl.model import FeedForward, RMSNorm, Transformer, apply_rotary_emb, precompute_freqs_cis


def llama_config(**overrides: object) -> LlamaConfig:
    # No eos/bos: HF's generate must not stop early where ours would not.
    fields: dict[str, object] = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


CONFIGS = {
    "multi-head, untied": llama_config(),
    "grouped-query, tied, theta 5e5": llama_config(
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rope_parameters={"rope_theta": 5e5},
    ),
    "multi-query, eps 1e-5, theta 1234.5": llama_config(
        num_key_value_heads=1, num_hidden_layers=3, rms_norm_eps=1e-5, rope_parameters={"rope_theta": 1234.5}
    ),
}


def hf_and_ours(config: LlamaConfig, seed: int = 0) -> tuple[LlamaForCausalLM, Transformer]:
    """A random HF model (weights spread wide enough that argmax is stable) and ours loaded from it."""
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in hf.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 1.0 / math.sqrt(parameter.shape[1]))
            else:
                parameter.uniform_(0.5, 1.5)
    args = args_from_hf_config(config)
    ours = Transformer(args).eval()
    ours.load_state_dict(load_hf_llama_state_dict(hf.state_dict(), args), strict=True)
    return hf, ours


@pytest.fixture(params=list(CONFIGS), scope="module")
def models(request: pytest.FixtureRequest) -> tuple[LlamaForCausalLM, Transformer]:
    return hf_and_ours(CONFIGS[request.param])


def halves_to_pairs(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last dimension from HF's rotate_half layout (i, i + D/2) to Meta's pairs (2i, 2i + 1)."""
    *leading, D = x.shape
    return x.reshape(*leading, 2, D // 2).transpose(-1, -2).reshape(*leading, D)


# The whole model


@torch.no_grad()
def test_logits_match(models: tuple[LlamaForCausalLM, Transformer]) -> None:
    hf, ours = models
    tokens = torch.randint(0, hf.config.vocab_size, (3, 40))
    torch.testing.assert_close(ours(tokens), hf(tokens).logits)


@torch.no_grad()
def test_greedy_continuation_matches_hf_generate(models: tuple[LlamaForCausalLM, Transformer]) -> None:
    hf, ours = models
    prompt = torch.randint(1, hf.config.vocab_size, (1, 7))
    expected = hf.generate(prompt, max_new_tokens=20, do_sample=False)[0, 7:].tolist()
    assert generate(ours, [prompt[0].tolist()], max_new_tokens=20, temperature=0.0) == [expected]


@torch.no_grad()
def test_left_padded_logits_match_hf_with_an_attention_mask() -> None:
    hf, ours = hf_and_ours(CONFIGS["grouped-query, tied, theta 5e5"])
    tokens = torch.randint(1, 128, (3, 12))
    pad_lengths = torch.tensor([0, 5, 11])
    real = torch.arange(12)[None, :] >= pad_lengths[:, None]  # (B, T)
    positions = (torch.arange(12)[None, :] - pad_lengths[:, None]).clamp(min=0)
    expected = hf(tokens, attention_mask=real.long(), position_ids=positions).logits
    got = ours(tokens, pad_lengths=pad_lengths)
    torch.testing.assert_close(got[real], expected[real])


@torch.no_grad()
def test_batched_greedy_generation_matches_hf_left_padded_generate() -> None:
    hf, ours = hf_and_ours(CONFIGS["multi-query, eps 1e-5, theta 1234.5"])
    prompts = [[5, 6, 7], [1, 2, 3, 4, 9, 10, 11, 12], [42]]
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    expected = hf.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False)
    assert generate(ours, prompts, max_new_tokens=12, temperature=0.0) == expected[:, width:].tolist()


# Building blocks, with the same weights


def test_rms_norm_matches_hf() -> None:
    ours, hf = RMSNorm(32, eps=1e-5), LlamaRMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        hf.weight.copy_(ours.weight)
    x = torch.randn(4, 7, 32) * 3
    torch.testing.assert_close(ours(x), hf(x))


def test_swiglu_matches_hf_mlp() -> None:
    config = llama_config(hidden_size=32, intermediate_size=80)
    hf, ours = LlamaMLP(config), FeedForward(32, 80)
    with torch.no_grad():
        ours.w1.weight.copy_(hf.gate_proj.weight)
        ours.w2.weight.copy_(hf.down_proj.weight)
        ours.w3.weight.copy_(hf.up_proj.weight)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(ours(x), hf(x))


@pytest.mark.parametrize("theta", [10000.0, 5e5])
def test_rotary_embedding_matches_hf_up_to_the_feature_order(theta: float) -> None:
    config = llama_config(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=2, rope_parameters={"rope_theta": theta}
    )
    B, T, D = 2, 9, 32
    q_hf, k_hf = torch.randn(B, 4, T, D), torch.randn(B, 2, T, D)  # HF layout: (B, heads, T, D)
    position_ids = torch.stack([torch.arange(T), torch.randint(0, 64, (T,))])  # (B, T), one row out of order
    cos, sin = LlamaRotaryEmbedding(config)(q_hf, position_ids)
    expected_q, expected_k = apply_rotary_pos_emb(q_hf, k_hf, cos, sin)

    freqs_cis = precompute_freqs_cis(D, 64, theta)[position_ids]  # (B, T, D/2, 2)
    q, k = apply_rotary_emb(
        halves_to_pairs(q_hf.transpose(1, 2)), halves_to_pairs(k_hf.transpose(1, 2)), freqs_cis
    )
    torch.testing.assert_close(q, halves_to_pairs(expected_q.transpose(1, 2)))
    torch.testing.assert_close(k, halves_to_pairs(expected_k.transpose(1, 2)))


@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_ntk_rope_scaling_equals_hf_dynamic_ntk_where_it_reaches_the_same_factor(factor: float) -> None:
    # HF's dynamic NTK raises the base by (factor * L / L_train - (factor - 1)) ** (D / (D - 2)) at length L;
    # at L = L_train * (2 - 1 / factor) that is factor ** (D / (D - 2)), our static scaling.
    config = llama_config(rope_parameters={"rope_type": "dynamic", "factor": factor, "rope_theta": 10000.0})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=int(64 * (2 - 1 / factor)))
    ours = precompute_freqs_cis(16, 2, 10000.0, rope_scaling=factor)[1]  # position 1: (cos, sin) of inv_freq
    torch.testing.assert_close(torch.atan2(ours[:, 1], ours[:, 0]), inv_freq.float())


# The conversion itself


def test_args_from_hf_config_maps_every_field() -> None:
    args = args_from_hf_config(CONFIGS["grouped-query, tied, theta 5e5"])
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads) == (64, 2, 8, 2)
    assert (args.vocab_size, args.hidden_dim, args.max_seq_len) == (128, 96, 64)
    assert (args.norm_eps, args.rope_theta, args.tie_embeddings, args.rope_scaling) == (1e-6, 5e5, True, None)


def test_args_from_a_config_json_dict_equal_those_from_the_config() -> None:
    for config in CONFIGS.values():
        assert args_from_hf_config(config.to_dict()) == args_from_hf_config(config)


def test_args_from_a_transformers_4_config_json() -> None:
    config = CONFIGS["grouped-query, tied, theta 5e5"].to_dict()
    del config["rope_parameters"]
    legacy = {**config, "rope_theta": 5e5, "rope_scaling": None}
    assert args_from_hf_config(legacy) == args_from_hf_config(CONFIGS["grouped-query, tied, theta 5e5"])
    with pytest.raises(ValueError, match="llama3"):
        args_from_hf_config({**legacy, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_bias": True}, "bias"),
        ({"mlp_bias": True}, "bias"),
        ({"hidden_act": "gelu"}, "silu"),
        ({"head_dim": 32}, "head_dim"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "linear"),
    ],
)
def test_args_from_hf_config_rejects_what_our_model_lacks(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        args_from_hf_config(llama_config(**overrides))


def test_the_output_of_a_tied_model_is_its_embedding() -> None:
    _, ours = hf_and_ours(CONFIGS["grouped-query, tied, theta 5e5"])
    assert ours.output.weight is ours.tok_embeddings.weight


def test_a_tied_checkpoint_whose_lm_head_differs_is_refused() -> None:
    config = CONFIGS["grouped-query, tied, theta 5e5"]
    state_dict = {key: value.clone() for key, value in LlamaForCausalLM(config).state_dict().items()}
    state_dict["lm_head.weight"] += 1
    with pytest.raises(ValueError, match="lm_head"):
        load_hf_llama_state_dict(state_dict, args_from_hf_config(config))


def test_unknown_and_missing_keys_are_refused() -> None:
    config = CONFIGS["multi-head, untied"]
    args = args_from_hf_config(config)
    state_dict = LlamaForCausalLM(config).state_dict()
    with pytest.raises(ValueError, match=r"model\.layers\.2\.mlp\.up_proj\.weight"):
        load_hf_llama_state_dict({**state_dict, "model.layers.2.mlp.up_proj.weight": torch.zeros(1)}, args)
    without_head = {key: value for key, value in state_dict.items() if key != "lm_head.weight"}
    with pytest.raises(ValueError, match=r"output\.weight"):
        load_hf_llama_state_dict(without_head, args)


def test_query_and_key_rows_are_reordered_but_values_are_not() -> None:
    config = CONFIGS["multi-head, untied"]
    state_dict = LlamaForCausalLM(config).state_dict()
    converted = load_hf_llama_state_dict(state_dict, args_from_hf_config(config))
    q_hf = state_dict["model.layers.0.self_attn.q_proj.weight"]  # (H*D, C), D = 16
    q_ours = converted["layers.0.attention.wq.weight"]
    torch.testing.assert_close(q_ours[0:2], q_hf[[0, 8]])  # head 0's first pair: HF rows 0 and D/2
    torch.testing.assert_close(q_ours[16:18], q_hf[[16, 24]])  # head 1's first pair
    assert converted["layers.0.attention.wv.weight"] is state_dict["model.layers.0.self_attn.v_proj.weight"]
