"""Write the handout's golden values, ``handout/tiny_llama.pt``, from reference_impl (trusted side only).

Students have no reference model, so the public tests of the parts that have no PyTorch built-in (attention
with RoPE, the block, the model, its gradients) compare against these numbers. The file holds a tiny model's
weights, a batch, and what the reference computes from them; ``tests/graders/test_hw2_transformer.py`` checks
that it still matches reference_impl. Regenerate it after a change to the reference or to this script:

    .venv/bin/python graders/hw2-transformer/make_fixture.py
"""

import math
from pathlib import Path
from typing import Any

import torch

from reference_impl.functional import rms_norm
from reference_impl.model import ModelArgs, Transformer
from reference_impl.train import cross_entropy

FIXTURE = Path(__file__).resolve().parent / "handout" / "tiny_llama.pt"
# Grouped-query attention (2 query heads per key/value head) with heads of width 8: small enough to ship
# (~18k weights), large enough that a wrong grouping, rotation or mask changes every logit.
FIXTURE_ARGS: dict[str, Any] = {
    "dim": 32,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 32,
    "hidden_dim": 48,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_seq_len": 32,
}
BATCH, LENGTH = 2, 12
SEED = 20270404


def _weights(model: Transformer, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Weights at the scale of a trained model's activations: N(0, 1/fan_in) matrices, norm weights near 1."""
    weights = {}
    for name, value in model.state_dict().items():
        if name == "tok_embeddings.weight":
            weights[name] = torch.randn(value.shape, generator=generator)
        elif value.dim() == 2:
            weights[name] = torch.randn(value.shape, generator=generator) / math.sqrt(value.shape[1])
        else:
            weights[name] = 1.0 + 0.2 * torch.randn(value.shape, generator=generator)
    return weights


def build_fixture() -> dict[str, Any]:
    """The fixture's contents: inputs, and the reference's outputs and layer-0 activations for them."""
    generator = torch.Generator().manual_seed(SEED)
    args = ModelArgs(**FIXTURE_ARGS)
    model = Transformer(args)
    state_dict = _weights(model, generator)
    model.load_state_dict(state_dict)
    tokens = torch.randint(0, args.vocab_size, (BATCH, LENGTH), generator=generator)
    targets = torch.randint(0, args.vocab_size, (BATCH, LENGTH), generator=generator)

    logits = model(tokens)
    loss = cross_entropy(logits, targets)
    loss.backward()
    grads = {name: param.grad.detach().clone() for name, param in model.named_parameters()}

    with torch.no_grad():
        freqs_cis = model.freqs_cis[:LENGTH]
        layer = model.layers[0]
        embedded = model.tok_embeddings(tokens)  # (B, T, C): layer 0's input
        attention_input = rms_norm(embedded, layer.attention_norm.weight, args.norm_eps)
        attention_output = layer.attention(attention_input, freqs_cis, None, None)
        block_output = layer(embedded, freqs_cis, None, None)
    return {
        "args": dict(FIXTURE_ARGS),
        "tokens": tokens,
        "targets": targets,
        "state_dict": state_dict,
        "layer0_input": embedded,
        "layer0_attention_input": attention_input,
        "layer0_attention_output": attention_output,
        "layer0_block_output": block_output,
        "logits": logits.detach(),
        "loss": loss.detach(),
        "grads": grads,
    }


def main() -> None:
    torch.save(build_fixture(), FIXTURE)


if __name__ == "__main__":
    main()
