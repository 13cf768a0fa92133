"""HW3 submissions for the self-test: planted bugs and a slower correct kernel, each made from the solution by
replacing exactly the lines at fault (so a change to the solution that moves them fails loudly here)."""

from pathlib import Path

HW3 = Path(__file__).resolve().parents[2] / "graders" / "hw3-flashattention"
SOLUTION_DIR = HW3 / "solution"
SOLUTION = (SOLUTION_DIR / "flash_attention.py").read_text()
MODULE_FILE = "flash_attention.py"


def planted(*edits: tuple[str, str, int]) -> dict[str, str]:
    """The solution with each ``(old, new, count)`` edit applied; ``old`` must occur exactly ``count`` times."""
    source = SOLUTION
    for old, new, count in edits:
        found = source.count(old)
        if found != count:
            raise AssertionError(f"expected {count} occurrence(s) of {old!r} in the solution, found {found}")
        source = source.replace(old, new)
    return {MODULE_FILE: source}


# flash-attn's bottom-right causal alignment (query i sees keys j <= i + S - T) in the forward kernel instead of
# the top-left one the assignment asks for: identical when T == S.
CAUSAL_BOTTOM_RIGHT = planted(
    (
        "* scale_log2  # (BLOCK_M, BLOCK_N), log2 units\n"
        "        visible = col_ok[None, :]\n"
        "        if CAUSAL:\n"
        "            visible = visible & (cols[None, :] <= rows[:, None])",
        "* scale_log2  # (BLOCK_M, BLOCK_N), log2 units\n"
        "        visible = col_ok[None, :]\n"
        "        if CAUSAL:\n"
        "            visible = visible & (cols[None, :] <= rows[:, None] + (S - T))",
        1,
    ),
)

# lse = log(l) without the running maximum m: the output is still right, the log-sum-exp (and so any backward
# pass that recomputes p from it) is not.
LSE_WITHOUT_MAX = planted(("lse = (m_i + tl.log2(l_i)) * LN2", "lse = tl.log2(l_i) * LN2", 1))

# dV accumulates P^T dO before the causal mask zeroes the probabilities of keys after the query.
DV_UNMASKED_P = planted(
    (
        "            p_t = tl.where(visible, p_t, 0.0)\n\n"
        "            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)\n",
        "            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)\n"
        "            p_t = tl.where(visible, p_t, 0.0)\n",
        1,
    )
)

# Query head h reads key/value head h % H_kv instead of h // (H / H_kv), in every kernel.
GQA_HEAD_MODULO = planted(
    ("    kv_head = head // GROUP\n", "    kv_head = head % (H // GROUP)\n", 2),
    (
        "        head = kv_head * GROUP + group_index\n",
        "        head = group_index * kv_heads + kv_head\n",
        1,
    ),
)

# Keys past S are loaded as zeros but not masked in the forward pass: right whenever S is a multiple of the
# block size (all the public tests), wrong for ragged lengths (a hidden test).
RAGGED_KEYS_UNMASKED = planted(
    (
        "* scale_log2  # (BLOCK_M, BLOCK_N), log2 units\n        visible = col_ok[None, :]\n",
        "* scale_log2  # (BLOCK_M, BLOCK_N), log2 units\n        visible = cols[None, :] >= 0\n",
        1,
    )
)

# Correct but slower: the smallest blocks on a GPU and no skipping of the key (query) blocks the causal mask
# hides, so causal attention does twice the work. The leaderboard must rank it behind the solution.
SLOW_CORRECT = planted(
    ("    return (64, 32) if dtype == torch.float32 else (64, 64)\n", "    return 16, 16\n", 1),
    ("        kv_end = tl.minimum(S, (pid_m + 1) * BLOCK_M)\n", "        kv_end = S\n", 2),
    ("        first_row = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M\n", "        first_row = 0\n", 1),
)
