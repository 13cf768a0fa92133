"""Loading Hugging Face ``LlamaForCausalLM`` weights into our ``Transformer``.

Two things differ between the checkpoints, and nothing else:

1. Names: ``model.layers.0.self_attn.q_proj.weight`` is our ``layers.0.attention.wq.weight`` (see ``_KEY_MAP``).
2. The order of the rows of ``wq`` and ``wk``. Our rotary embedding (Meta's) rotates neighbouring features
   ``(2i, 2i+1)`` of a head together; Hugging Face's ``rotate_half`` rotates feature ``i`` with ``i + D/2``.
   Meta's weights were converted to Hugging Face by moving row ``2i + j`` of every head to row
   ``j * D/2 + i``; ``_hf_to_meta_rows`` moves them back. Permuting the rows of the query and key projections
   the same way permutes the features of q and k identically, so every dot product q.k is unchanged, and
   the values (``wv``) are not rotated at all.

No file is read here: the caller builds the Hugging Face model or loads its state dict (safetensors) and
passes the tensors in, and this module has no dependency on ``transformers``.
"""

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from reference_impl.model import ModelArgs

# Hugging Face name (with {} for the layer index) -> our name.
_KEY_MAP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
}

# Older transformers versions saved the rotary frequencies; they are derived from the config, so skip them.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|model\.rotary_emb\.inv_freq")


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def args_from_hf_config(config: Any) -> ModelArgs:
    """``ModelArgs`` for a Hugging Face ``LlamaConfig`` (or its ``config.json`` as a dict).

    Raises ``ValueError`` for the features our model does not have: biases, another activation, a head
    width other than ``hidden_size / num_attention_heads``, or any rotary scaling type (Hugging Face's
    "linear", "dynamic", "llama3", "yarn" ... all differ from our static NTK ``rope_scaling``).
    """
    dim = _config_value(config, "hidden_size")
    n_heads = _config_value(config, "num_attention_heads")
    if _config_value(config, "hidden_act", "silu") != "silu":
        raise ValueError(
            f"only SwiGLU (hidden_act='silu') is supported, got {_config_value(config, 'hidden_act')}"
        )
    if _config_value(config, "attention_bias", False) or _config_value(config, "mlp_bias", False):
        raise ValueError("attention_bias and mlp_bias are not supported: LLaMA's projections have no bias")
    head_dim = _config_value(config, "head_dim") or dim // n_heads
    if head_dim * n_heads != dim:
        raise ValueError(f"head_dim {head_dim} * num_attention_heads {n_heads} must equal hidden_size {dim}")

    # transformers 5 keeps theta and the scaling type in rope_parameters; 4.x had rope_theta and rope_scaling.
    rope = _config_value(config, "rope_parameters") or _config_value(config, "rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rotary scaling type {rope_type!r} is not supported; only the default RoPE is")
    rope_theta = rope.get("rope_theta", _config_value(config, "rope_theta", 10000.0))

    return ModelArgs(
        dim=dim,
        n_layers=_config_value(config, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=_config_value(config, "num_key_value_heads") or n_heads,
        vocab_size=_config_value(config, "vocab_size"),
        hidden_dim=_config_value(config, "intermediate_size"),
        norm_eps=_config_value(config, "rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        max_seq_len=_config_value(config, "max_position_embeddings"),
        tie_embeddings=bool(_config_value(config, "tie_word_embeddings", False)),
    )


def _hf_to_meta_rows(weight: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """Reorder the rows of a q or k projection ``(n_heads * head_dim, C)`` from HF's halves to Meta's pairs."""
    expected = (n_heads * head_dim, weight.shape[-1])
    if weight.dim() != 2 or weight.shape != expected:
        raise ValueError(f"expected a projection of shape {expected}, got {tuple(weight.shape)}")
    C = weight.shape[1]
    halves = weight.reshape(n_heads, 2, head_dim // 2, C)  # (H, j, i, C): HF row j * D/2 + i
    pairs = halves.transpose(1, 2)  # (H, i, j, C): Meta row 2i + j
    return pairs.reshape(n_heads * head_dim, C)  # (H*D, C)


def load_hf_llama_state_dict(state_dict: Mapping[str, Tensor], args: ModelArgs) -> dict[str, Tensor]:
    """Convert a ``LlamaForCausalLM`` state dict into one that ``Transformer(args)`` loads with strict=True.

    With ``args.tie_embeddings`` the output projection is the embedding matrix; a ``lm_head.weight`` in the
    input must then equal it. Missing or unknown keys raise ``ValueError``.
    """
    converted: dict[str, Tensor] = {}
    unknown = []
    for hf_key, tensor in state_dict.items():
        if _IGNORED.fullmatch(hf_key):
            continue
        our_key = _map_key(hf_key, args.n_layers)
        if our_key is None:
            unknown.append(hf_key)
            continue
        if our_key.endswith("attention.wq.weight"):
            tensor = _hf_to_meta_rows(tensor, args.n_heads, args.head_dim)
        elif our_key.endswith("attention.wk.weight"):
            tensor = _hf_to_meta_rows(tensor, args.n_kv_heads, args.head_dim)
        converted[our_key] = tensor
    if unknown:
        raise ValueError(f"keys that are not part of a LlamaForCausalLM with these args: {sorted(unknown)}")

    if args.tie_embeddings and "tok_embeddings.weight" in converted:
        embeddings = converted["tok_embeddings.weight"]
        if "output.weight" in converted and not torch.equal(converted["output.weight"], embeddings):
            raise ValueError(
                "tie_embeddings is set but lm_head.weight differs from model.embed_tokens.weight"
            )
        converted["output.weight"] = embeddings

    expected = {ours.format(i) for ours in _KEY_MAP.values() for i in range(args.n_layers)}
    missing = sorted(expected - converted.keys())
    if missing:
        raise ValueError(f"the state dict lacks the weights for {missing}")
    return converted


def _map_key(hf_key: str, n_layers: int) -> str | None:
    """Our name for a Hugging Face key, or None if it is not one a Llama model of n_layers layers has."""
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_key)
    if match is None:
        return _KEY_MAP.get(hf_key)
    layer, rest = int(match.group(1)), match.group(2)
    template = _KEY_MAP.get(f"model.layers.{{}}.{rest}")
    if template is None or layer >= n_layers:
        return None
    return template.format(layer)
