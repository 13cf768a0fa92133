"""Submissions for the hw5-inference self-test: the reference solution with one planted bug each.

The solution holds only the files a student writes (the self-test writes them over the handout, which has the
rest). Each bug is a (file, old text, new text) edit of the solution; ``submission(bug)`` returns the edited
file set (``{relative path: source}``), failing loudly if the solution no longer contains the text to replace.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "graders" / "hw5-inference"
SOLUTION = PACKAGE / "solution"

Edit = tuple[str, str, str]

# top_k_filter keeps exactly k tokens (by index), dropping tokens tied with the k-th largest. The public tests
# have no ties, so they pass; the hidden tie cases do not.
TOP_K_DROPS_TIES: Edit = (
    "hw5_inference/sampling.py",
    """    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits >= kth_largest  # (..., V)""",
    """    indices = torch.topk(logits, k, dim=-1).indices  # (..., k)
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, indices, True)""",
)

# The attention mask is causal only: real tokens attend to the left padding of their row.
ATTENDS_TO_PADDING: Edit = (
    "hw5_inference/kv_cache.py",
    "    return (causal[None] & not_padding[:, None, :]) | itself[None]  # (B, T, S)",
    "    return (causal[None] | itself[None]).expand(pad_lengths.shape[0], -1, -1)  # (B, T, S)",
)

# copy_to_parallel's backward is the identity: the input gradient of a column-parallel layer misses the other
# rank's share (forward results stay right).
COPY_BACKWARD_WITHOUT_ALL_REDUCE: Edit = (
    "hw5_inference/tensor_parallel.py",
    """    def backward(ctx, grad: Tensor) -> Tensor:
        return _all_reduce(grad)""",
    """    def backward(ctx, grad: Tensor) -> Tensor:
        return grad""",
)

BUGS: dict[str, Edit] = {
    "top-k-drops-ties": TOP_K_DROPS_TIES,
    "attends-to-padding": ATTENDS_TO_PADDING,
    "copy-backward-without-all-reduce": COPY_BACKWARD_WITHOUT_ALL_REDUCE,
}


def solution_files() -> dict[str, str]:
    directory = SOLUTION / "hw5_inference"
    return {f"hw5_inference/{path.name}": path.read_text() for path in sorted(directory.glob("*.py"))}


def submission(edit: Edit) -> dict[str, str]:
    """The solution with ``edit`` applied."""
    path, old, new = edit
    files = solution_files()
    if files[path].count(old) != 1:
        raise AssertionError(
            f"the planted bug no longer applies: {path} does not contain its text exactly once"
        )
    files[path] = files[path].replace(old, new)
    return files
