"""Autoregressive decoding with a KV cache: sampling rules, then batched generation.

``generate`` runs in two phases. Prefill: all prompts, left-padded to one length, go through the model in
one call that fills the KV caches and yields the first new token of every row. Decode: one call per step,
each feeding the token just chosen and reading everything before it from the cache.

Left padding keeps every row's next token in the same column and the cache slots shared by the batch; the
model is told each row's padding (``pad_lengths``) so padding is never attended to and each prompt's
positions start at 0. Greedy results therefore never depend on what a prompt is batched with. Sampled
results are reproducible for a given seed and batch; one random stream serves the whole batch, so the same
prompt batched differently draws differently.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from reference_impl.model import Transformer


def top_k_mask(logits: Tensor, top_k: int) -> Tensor:
    """True for the tokens top-k sampling keeps: every token whose logit is at least the k-th largest.

    Tokens tied with the k-th largest are all kept (more than k tokens then survive), as Hugging Face and
    gpt-fast do: which of several equal tokens to drop would otherwise depend on their order in the
    vocabulary.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    k = min(top_k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits >= kth_largest  # (..., V)


def top_p_mask(probs: Tensor, top_p: float) -> Tensor:
    """True for the tokens nucleus sampling keeps, from probabilities ``(..., V)`` that sum to 1.

    The nucleus is the smallest set of most probable tokens whose total probability reaches ``top_p``: a
    token is kept when the tokens ranked above it hold less than ``top_p`` between them. The most probable
    token is always kept, and tokens tied with the last one kept are kept too, whatever order the sort put
    them in.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)  # (..., V)
    mass_above = F.pad(sorted_probs.cumsum(dim=-1)[..., :-1], (1, 0))  # (..., V): probability ranked above
    n_kept = (mass_above < top_p).sum(dim=-1, keepdim=True)  # (..., 1); >= 1 since mass_above[0] == 0
    smallest_kept = sorted_probs.gather(-1, n_kept - 1)  # (..., 1)
    return probs >= smallest_kept  # (..., V)


def _check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def sample(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose one token id per row of ``logits`` ``(..., V)``; returns int64 ``(...)``.

    ``temperature == 0`` is greedy decoding: the argmax (the lowest id among equal maxima), with no
    randomness and top_k/top_p irrelevant. Otherwise the logits are divided by the temperature, cut to the
    top k, turned into probabilities, cut to the nucleus of mass top_p, renormalised, and sampled from with
    ``generator`` (on the logits' device).
    """
    if not logits.dtype.is_floating_point or logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"logits must be a floating-point (..., V) tensor, got {logits.dtype} {logits.shape}"
        )
    _check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)

    scores = logits.float() / temperature  # (..., V)
    if top_k is not None:
        scores = scores.masked_fill(~top_k_mask(scores, top_k), float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (..., V)
    if top_p is not None and top_p < 1:
        probs = probs.masked_fill(~top_p_mask(probs, top_p), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    flat = probs.reshape(-1, probs.shape[-1])  # (N, V)
    ids = torch.multinomial(flat, num_samples=1, generator=generator)  # (N, 1)
    return ids.reshape(logits.shape[:-1])  # (...)


def prefill(model: Transformer, tokens: Tensor, pad_lengths: Tensor) -> Tensor:
    """Run the left-padded prompts ``(B, L)`` through the model, filling cache slots ``0 .. L-1``.

    Returns the logits of each row's last prompt token, ``(B, V)``: the distribution of its first new token.
    """
    input_pos = torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
    return model(tokens, input_pos=input_pos, pad_lengths=pad_lengths)[:, -1]  # (B, V)


def decode_step(model: Transformer, next_tokens: Tensor, slot: int, pad_lengths: Tensor) -> Tensor:
    """Feed one token per row ``(B,)`` at cache slot ``slot``; returns the next distribution's logits (B, V)."""
    input_pos = torch.tensor([slot], device=next_tokens.device)  # (1,)
    return model(next_tokens[:, None], input_pos=input_pos, pad_lengths=pad_lengths)[:, -1]  # (B, V)


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; returns only the new tokens of each.

    A row stops after it produces ``eos_id`` (which ends its list); the others go on. ``seed`` makes
    sampling reproducible; without it, sampling uses torch's global random state. The model gets fresh KV
    caches for the call and none afterwards.
    """
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    vocab_size = model.args.vocab_size
    if any(not 0 <= token < vocab_size for prompt in prompts for token in prompt):
        raise ValueError(f"prompt token ids must lie in [0, {vocab_size})")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt_len = max(len(prompt) for prompt in prompts)
    total_len = prompt_len + max_new_tokens
    if total_len > model.args.max_seq_len:
        raise ValueError(
            f"the longest prompt ({prompt_len}) plus max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_seq_len ({model.args.max_seq_len})"
        )
    _check_sampling_args(temperature, top_k, top_p)  # before any work is done
    if max_new_tokens == 0:
        return [[] for _ in prompts]

    device = model.tok_embeddings.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    batch_size = len(prompts)
    pad_lengths = torch.tensor([prompt_len - len(prompt) for prompt in prompts], device=device)  # (B,)
    # Any valid id fills the padding; the mask keeps it out of every real token's attention.
    tokens = torch.tensor([[0] * (prompt_len - len(prompt)) + prompt for prompt in prompts], device=device)

    model.setup_caches(batch_size, total_len)
    try:
        outputs: list[list[int]] = [[] for _ in prompts]
        finished = [False] * batch_size
        logits = prefill(model, tokens, pad_lengths)  # (B, V)
        for step in range(max_new_tokens):
            next_tokens = sample(logits, temperature, top_k, top_p, generator)  # (B,)
            for row, token in enumerate(next_tokens.tolist()):
                if not finished[row]:
                    outputs[row].append(token)
                    finished[row] = token == eos_id
            if all(finished) or step == max_new_tokens - 1:
                break
            logits = decode_step(model, next_tokens, prompt_len + step, pad_lengths)  # (B, V)
    finally:
        model.remove_caches()
    return outputs
