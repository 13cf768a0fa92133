"""Submissions for the hw4-moe-lora-finetune self-test: the reference solution with one planted bug each.

Each bug is an (old text, new text) edit of the solution's moe_lora.py; ``submission(bug)`` returns the edited
file as ``{"moe_lora.py": source}`` (the self-test writes it over the handout, as a student edits their copy),
failing loudly if the solution no longer contains the text to replace.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "graders" / "hw4-moe-lora-finetune"
SOLUTION = PACKAGE / "solution"
HANDOUT = PACKAGE / "handout"

Edit = tuple[str, str]

# Routing with torch.topk, which makes no promise about ties: equal router probabilities may go to the higher
# expert index. Random router weights never tie, so only the tie test notices.
ROUTES_TIES_WITH_TOPK: Edit = (
    """    sorted_probs, sorted_experts = probs.sort(dim=-1, descending=True, stable=True)  # (N, E)
    top_probs, chosen = sorted_probs[:, :top_k], sorted_experts[:, :top_k]  # (N, K)""",
    """    top_probs, chosen = probs.topk(top_k, dim=-1)  # (N, K)""",
)

# Adapter keys found by substring: "...wq.lora_magnitude_vector" passes, and so does "...lora_A.default.weight".
# The public test has only real adapter keys and base weights, so it passes: partial marks.
ADAPTER_KEYS_BY_SUBSTRING: Edit = (
    """    return {key: value for key, value in state_dict.items() if key.rpartition(".")[2] in ADAPTER_NAMES}""",
    """    return {key: value for key, value in state_dict.items() if any(name in key for name in ADAPTER_NAMES)}""",
)

# A safety margin with the wrong sign: training goes on 2 s past the deadline. The held-out run stops early
# (converged) and passes; the short-budget run overshoots its budget.
STOPS_LATE: Edit = (
    """SAFETY_MARGIN_S = 0.3""",
    """SAFETY_MARGIN_S = -2.0""",
)

# Adam without its epsilon: while B is still zero, A's gradient and moments are zero and its first update is
# 0 / 0 = NaN. The loss turns NaN and the loop ends at once; both fine-tuning tests must reject the adapters.
ADAM_WITHOUT_EPS: Edit = (
    """        denominator = (exp_avg_sq / correction2).sqrt_().add_(ADAM_EPS)""",
    """        denominator = (exp_avg_sq / correction2).sqrt_()""",
)


def submission(bug: Edit) -> dict[str, str]:
    """The solution's moe_lora.py with ``bug`` applied."""
    old, new = bug
    source = (SOLUTION / "moe_lora.py").read_text()
    if source.count(old) != 1:
        raise AssertionError(
            f"the solution no longer contains exactly one copy of the text to replace: {old!r}"
        )
    return {"moe_lora.py": source.replace(old, new)}
