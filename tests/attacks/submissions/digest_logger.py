"""Run 1 of a replay: computes correct answers and logs a digest of every input it is given, so that a later
submission can recognise the same inputs and answer them from a table instead of computing."""

import hashlib

import torch
from _prelude import honest_rms_norm, honest_softmax, report


def digest(*tensors):
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:16]


seen = []


def softmax(x, dim=-1):
    seen.append(digest(x))
    report("digests", seen=seen)
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    seen.append(digest(x, weight))
    report("digests", seen=seen)
    return honest_rms_norm(x, weight, eps)
