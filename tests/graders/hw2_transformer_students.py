"""Submissions for the self-test of graders/hw2-transformer: the solution with one planted bug each.

Each bug is one textual edit of the reference solution, so it changes exactly one component; the edit must
match the solution exactly once, which keeps these in step with it.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "graders" / "hw2-transformer"
SOLUTION = (PACKAGE / "solution" / "llama.py").read_text()


def planted(*edits: tuple[str, str]) -> dict[str, str]:
    """The solution with each ``(old, new)`` edit made, as a submission ``{"llama.py": source}``."""
    source = SOLUTION
    for old, new in edits:
        if source.count(old) != 1:
            raise AssertionError(f"a planted edit must match the solution exactly once: {old!r}")
        source = source.replace(old, new)
    return {"llama.py": source}


# Grouped-query attention that tiles the key/value heads (head h reads h % K) instead of giving consecutive
# query heads the same one (h // (H / K)): right for multi-head and multi-query attention only.
GQA_TILED = planted(
    (
        "    k = k.repeat_interleave(group, dim=1)  # (B, H, T, D)\n"
        "    v = v.repeat_interleave(group, dim=1)  # (B, H, T, D)\n",
        "    k = k.repeat(1, group, 1, 1)\n    v = v.repeat(1, group, 1, 1)\n",
    )
)

# Hugging Face's rotate_half pairing (feature i with i + D/2) instead of Meta's neighbouring pairs. Position 0
# is not rotated at all, so only tables of later positions show it.
ROPE_HALF_SPLIT = planted(
    (
        "    pairs = x.to(torch.float32).reshape(B, T, N, D // 2, 2)  # neighbouring features form a complex number\n"
        "    real, imag = pairs[..., 0], pairs[..., 1]  # (B, T, N, D/2)\n",
        "    halves = x.to(torch.float32).reshape(B, T, N, 2, D // 2)\n"
        "    real, imag = halves[..., 0, :], halves[..., 1, :]\n",
    ),
    (
        "    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)  # (B, T, N, D/2, 2)\n",
        "    rotated = torch.cat((real * cos - imag * sin, real * sin + imag * cos), dim=-1)\n",
    ),
)

# The normaliser treated as a constant: every forward output is right, the gradient with respect to x is not.
RMS_NORM_DETACHED = planted(
    (
        "    inv_rms = torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)\n",
        "    inv_rms = torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + eps).detach()\n",
    )
)

# ignore_index is accepted but not honoured: ignored targets are looked up like any other. The public tests
# have no ignored targets, so this passes them.
CROSS_ENTROPY_IGNORES_NOTHING = planted(
    (
        "    keep = flat_targets != ignore_index\n",
        "    keep = torch.ones_like(flat_targets, dtype=torch.bool)\n",
    )
)

# Token embeddings scaled by sqrt(dim), as Gemma does and LLaMA does not: every component is right on its own,
# the model that joins them is not.
EMBEDDING_SCALED = planted(
    (
        '    h = state_dict["tok_embeddings.weight"][tokens]  # (B, T, C)\n',
        '    h = state_dict["tok_embeddings.weight"][tokens] * math.sqrt(args["dim"])\n',
    )
)
