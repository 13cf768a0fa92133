"""The model on its own: presets, argument checks, rotary embeddings, attention, cached decoding, padding,
and the KV cache."""

import dataclasses
import math
import time

import pytest
import torch

from reference_impl.kv_cache import KVCache
from reference_impl.model import (
    Attention,
    ModelArgs,
    RMSNorm,
    Transformer,
    apply_rotary_emb,
    llama_hidden_dim,
    precompute_freqs_cis,
)

DEBUG = ModelArgs.from_name("debug")


def random_model(args: ModelArgs = DEBUG, seed: int = 0) -> Transformer:
    """A model whose logits are far apart (N(0, 0.02) makes them nearly equal), so argmax is stable."""
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 1.0 / math.sqrt(parameter.shape[1]))
            else:
                parameter.uniform_(0.5, 1.5)
    return model.eval()


# Presets


@pytest.mark.parametrize(
    ("name", "n_parameters"),
    [("tinyllama-1.1b", 1_100_048_384), ("llama2-7b", 6_738_415_616), ("llama3-8b", 8_030_261_248)],
)
def test_published_presets_have_the_published_parameter_counts(name: str, n_parameters: int) -> None:
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_name(name))
    assert sum(parameter.numel() for parameter in model.parameters()) == n_parameters


def test_llama_hidden_dim_gives_the_published_swiglu_widths() -> None:
    assert llama_hidden_dim(4096) == 11008
    assert llama_hidden_dim(2048) == 5632
    assert llama_hidden_dim(4096, multiple_of=1024, ffn_dim_multiplier=1.3) == 14336


def test_debug_preset_runs_on_cpu_in_well_under_a_second() -> None:
    start = time.perf_counter()
    model = Transformer(DEBUG)
    logits = model(torch.randint(0, DEBUG.vocab_size, (2, DEBUG.max_seq_len)))
    assert logits.shape == (2, DEBUG.max_seq_len, DEBUG.vocab_size)
    assert time.perf_counter() - start < 1.0


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="debug"):
        ModelArgs.from_name("gpt-5")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_kv_heads": 3}, "divisible by n_kv_heads"),
        ({"dim": 66}, "divisible by n_heads"),
        ({"dim": 36, "n_heads": 4}, "even"),
        ({"n_layers": 0}, "n_layers"),
        ({"rope_scaling": 0.5}, "rope_scaling"),
        ({"norm_eps": 0.0}, "norm_eps"),
    ],
)
def test_model_args_reject_inconsistent_shapes(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(DEBUG, **changes)


# Building blocks


def test_rms_norm_returns_the_input_dtype() -> None:
    norm = RMSNorm(8)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16
    expected = x.float() / x.float().pow(2).mean(-1, keepdim=True).add(norm.eps).sqrt()
    torch.testing.assert_close(norm(x).float(), expected, atol=1e-2, rtol=1e-2)


def test_rotary_embedding_preserves_the_length_of_every_pair() -> None:
    xq, xk = torch.randn(2, 5, 4, 16), torch.randn(2, 5, 2, 16)
    freqs_cis = precompute_freqs_cis(16, 5)
    rq, rk = apply_rotary_emb(xq, xk, freqs_cis)
    for x, rotated in ((xq, rq), (xk, rk)):
        torch.testing.assert_close(
            rotated.reshape(2, 5, -1, 8, 2).norm(dim=-1), x.reshape(2, 5, -1, 8, 2).norm(dim=-1)
        )


def test_rotary_scores_depend_only_on_the_distance_between_positions() -> None:
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    table = precompute_freqs_cis(32, 64, theta=500.0)

    def score(query_pos: int, key_pos: int) -> torch.Tensor:
        rq, _ = apply_rotary_emb(q, q, table[query_pos : query_pos + 1])
        rk, _ = apply_rotary_emb(k, k, table[key_pos : key_pos + 1])
        return (rq * rk).sum()

    torch.testing.assert_close(score(7, 3), score(40, 36))
    torch.testing.assert_close(score(3, 3), (q * k).sum())


def test_rope_scaling_keeps_the_fastest_pair_and_slows_the_slowest_by_the_factor() -> None:
    dim, factor = 16, 4.0
    plain = precompute_freqs_cis(dim, 2, theta=10000.0)
    scaled = precompute_freqs_cis(dim, 2, theta=10000.0, rope_scaling=factor)
    plain_angles = torch.atan2(plain[1, :, 1], plain[1, :, 0])  # angle at position 1 = the frequency
    scaled_angles = torch.atan2(scaled[1, :, 1], scaled[1, :, 0])
    torch.testing.assert_close(scaled_angles[0], plain_angles[0])
    torch.testing.assert_close(scaled_angles[-1], plain_angles[-1] / factor)


def test_apply_rotary_emb_rejects_a_table_of_the_wrong_length() -> None:
    xq = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="freqs_cis"):
        apply_rotary_emb(xq, xq, precompute_freqs_cis(8, 5))


def test_grouped_query_attention_equals_multi_head_attention_with_each_kv_head_repeated() -> None:
    grouped_args = dataclasses.replace(DEBUG, n_heads=4, n_kv_heads=2)
    grouped = Attention(grouped_args)
    multi_head = Attention(dataclasses.replace(grouped_args, n_kv_heads=4))
    D = grouped_args.head_dim
    with torch.no_grad():
        multi_head.wq.weight.copy_(grouped.wq.weight)
        multi_head.wo.weight.copy_(grouped.wo.weight)
        # Query heads 0 and 1 read key/value head 0; heads 2 and 3 read head 1.
        for name in ("wk", "wv"):
            per_head = getattr(grouped, name).weight.view(2, D, -1)  # (K, D, C)
            getattr(multi_head, name).weight.copy_(per_head.repeat_interleave(2, dim=0).reshape(4 * D, -1))
    x = torch.randn(2, 6, grouped_args.dim)
    freqs_cis = precompute_freqs_cis(D, 6)
    torch.testing.assert_close(grouped(x, freqs_cis, None, None), multi_head(x, freqs_cis, None, None))


# The whole model


def test_logits_do_not_depend_on_later_tokens() -> None:
    model = random_model()
    tokens = torch.randint(0, DEBUG.vocab_size, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % DEBUG.vocab_size
    torch.testing.assert_close(model(tokens)[:, :8], model(changed)[:, :8])


def test_tied_embeddings_are_one_tensor() -> None:
    model = Transformer(dataclasses.replace(DEBUG, tie_embeddings=True))
    assert model.output.weight is model.tok_embeddings.weight


def test_state_dict_holds_parameters_only() -> None:
    model = Transformer(DEBUG)
    model.setup_caches(2, 16)
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}
    assert "layers.0.attention.wq.weight" in model.state_dict()


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[16], [5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 4, 3, 8]])
def test_cached_decoding_gives_the_full_forward_logits_at_every_step(chunks: list[int]) -> None:
    model = random_model()
    tokens = torch.randint(0, DEBUG.vocab_size, (3, sum(chunks)))
    full = model(tokens)
    model.setup_caches(max_batch_size=4, max_seq_len=32)
    start = 0
    for length in chunks:
        input_pos = torch.arange(start, start + length)
        cached = model(tokens[:, start : start + length], input_pos=input_pos)
        torch.testing.assert_close(cached, full[:, start : start + length], atol=1e-5, rtol=1e-5)
        start += length


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(prompt) for prompt in prompts)
    tokens = torch.tensor([[7] * (length - len(prompt)) + prompt for prompt in prompts])
    return tokens, torch.tensor([length - len(prompt) for prompt in prompts])


@torch.no_grad()
def test_left_padded_rows_get_the_logits_of_their_unpadded_prompts() -> None:
    model = random_model()
    prompts = [torch.randint(0, DEBUG.vocab_size, (n,)).tolist() for n in (9, 1, 4)]
    tokens, pad_lengths = _left_padded(prompts)
    batched = model(tokens, pad_lengths=pad_lengths)
    for row, prompt in enumerate(prompts):
        alone = model(torch.tensor([prompt]))[0]
        torch.testing.assert_close(batched[row, pad_lengths[row] :], alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padded_rows_decode_with_the_cache_as_their_unpadded_prompts() -> None:
    model = random_model()
    prompts = [torch.randint(0, DEBUG.vocab_size, (n,)).tolist() for n in (2, 6)]
    continuation = torch.randint(0, DEBUG.vocab_size, (2, 4))
    tokens, pad_lengths = _left_padded(prompts)
    model.setup_caches(2, 10)
    prefill = model(tokens, input_pos=torch.arange(6), pad_lengths=pad_lengths)
    steps = [
        model(continuation[:, i : i + 1], input_pos=torch.tensor([6 + i]), pad_lengths=pad_lengths)
        for i in range(4)
    ]
    batched = torch.cat([prefill, *steps], dim=1)  # (2, 10, V)
    for row, prompt in enumerate(prompts):
        alone = model(torch.cat([torch.tensor([prompt]), continuation[row : row + 1]], dim=1))[0]
        torch.testing.assert_close(batched[row, pad_lengths[row] :], alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padded_rows_cache_the_keys_of_their_unpadded_prompts() -> None:
    model = random_model()
    prompts = [[1, 2, 3, 4, 5, 6], [9, 8]]
    tokens, pad_lengths = _left_padded(prompts)
    model.setup_caches(2, 6)
    model(tokens, input_pos=torch.arange(6), pad_lengths=pad_lengths)
    batched_keys = model.layers[0].attention.kv_cache.k_cache[1, :, 4:].clone()  # (K, 2, D): row 1's prompt
    model.setup_caches(1, 2)
    model(torch.tensor([prompts[1]]), input_pos=torch.arange(2))
    torch.testing.assert_close(batched_keys, model.layers[0].attention.kv_cache.k_cache[0])


def test_model_runs_in_bfloat16_with_a_cache_of_its_dtype() -> None:
    model = Transformer(DEBUG).to(torch.bfloat16)
    model.setup_caches(1, 8)
    assert model.layers[0].attention.kv_cache.k_cache.dtype == torch.bfloat16
    logits = model(torch.tensor([[1, 2, 3]]), input_pos=torch.arange(3))
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


def test_remove_caches_frees_every_layer() -> None:
    model = Transformer(DEBUG)
    model.setup_caches(1, 8)
    model.remove_caches()
    assert all(layer.attention.kv_cache is None for layer in model.layers)


# Bad arguments


def test_sequence_longer_than_max_seq_len_raises() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        Transformer(DEBUG)(torch.zeros(1, DEBUG.max_seq_len + 1, dtype=torch.long))


def test_input_pos_without_caches_raises() -> None:
    with pytest.raises(ValueError, match="setup_caches"):
        Transformer(DEBUG)(torch.zeros(1, 3, dtype=torch.long), input_pos=torch.arange(3))


def test_input_pos_beyond_the_cache_raises() -> None:
    model = Transformer(DEBUG)
    model.setup_caches(1, 8)
    with pytest.raises(ValueError, match="cache length"):
        model(torch.zeros(1, 1, dtype=torch.long), input_pos=torch.tensor([8]))


def test_input_pos_of_the_wrong_length_raises() -> None:
    model = Transformer(DEBUG)
    model.setup_caches(1, 8)
    with pytest.raises(ValueError, match="input_pos"):
        model(torch.zeros(1, 2, dtype=torch.long), input_pos=torch.tensor([0]))


def test_cache_longer_than_max_seq_len_raises() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        Transformer(DEBUG).setup_caches(1, DEBUG.max_seq_len + 1)


def test_batch_larger_than_the_cache_raises() -> None:
    model = Transformer(DEBUG)
    model.setup_caches(1, 8)
    with pytest.raises(ValueError, match="max_batch_size"):
        model(torch.zeros(2, 1, dtype=torch.long), input_pos=torch.tensor([0]))


@pytest.mark.parametrize("tokens", [torch.zeros(4, dtype=torch.long), torch.zeros(1, 4)])
def test_tokens_must_be_a_2d_integer_tensor(tokens: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="tokens"):
        Transformer(DEBUG)(tokens)


def test_negative_pad_lengths_raise() -> None:
    with pytest.raises(ValueError, match="pad_lengths"):
        Transformer(DEBUG)(torch.zeros(1, 3, dtype=torch.long), pad_lengths=torch.tensor([-1]))


# The KV cache


def test_kv_cache_writes_the_given_slots_and_returns_the_first_rows() -> None:
    cache = KVCache(max_batch_size=3, max_seq_len=6, n_kv_heads=2, head_dim=4, dtype=torch.float32)
    k, v = torch.randn(2, 2, 2, 4), torch.randn(2, 2, 2, 4)
    k_all, v_all = cache.update(torch.tensor([1, 4]), k, v)
    assert k_all.shape == v_all.shape == (2, 2, 6, 4)
    torch.testing.assert_close(k_all[:, :, [1, 4]], k)
    torch.testing.assert_close(v_all[:, :, [1, 4]], v)
    assert k_all[:, :, [0, 2, 3, 5]].eq(0).all()
    assert cache.k_cache[2].eq(0).all()


def test_kv_cache_takes_dtype_and_device_from_its_arguments_and_is_never_saved() -> None:
    cache = KVCache(1, 4, 1, 2, dtype=torch.float16, device="meta")
    assert cache.k_cache.dtype == cache.v_cache.dtype == torch.float16
    assert cache.k_cache.device.type == "meta"
    assert cache.state_dict() == {}


@pytest.mark.parametrize(
    ("input_pos", "k", "message"),
    [
        (torch.tensor([0]), torch.randn(1, 2, 1, 4, dtype=torch.float64), "stores"),
        (torch.tensor([0]), torch.randn(1, 3, 1, 4), "heads"),
        (torch.tensor([0]), torch.randn(2, 2, 1, 4), "rows"),
        (torch.tensor([6]), torch.randn(1, 2, 1, 4), "cache length"),
        (torch.tensor([0, 1]), torch.randn(1, 2, 1, 4), "input_pos"),
    ],
)
def test_kv_cache_rejects_tensors_that_do_not_fit(
    input_pos: torch.Tensor, k: torch.Tensor, message: str
) -> None:
    cache = KVCache(max_batch_size=1, max_seq_len=6, n_kv_heads=2, head_dim=4, dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        cache.update(input_pos, k, k.clone())
