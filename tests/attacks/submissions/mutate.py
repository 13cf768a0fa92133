"""Mutates its inputs: softmax overwrites x with zeros and returns the softmax of that (uniform), which would
pass if the grader compared against the input after the call; rms_norm computes the right answer into x and
returns x itself. The grader keeps its own copy of every input: softmax scores nothing, rms_norm's values are
right, and the in-place writes cost inputs_not_mutated."""

from _prelude import honest_rms_norm, honest_softmax


def softmax(x, dim=-1):
    x.zero_()
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    return x.copy_(honest_rms_norm(x, weight, eps))
