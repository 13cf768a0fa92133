"""Run 2 of a replay: answers only inputs it recognises from run 1's log (CONTEXT["known"]), zeros otherwise.

The seed is fresh for every run, so nothing is ever recognised: it scores what computing nothing scores.
"""

import hashlib

import torch
from _prelude import CONTEXT, honest_rms_norm, honest_softmax, report

KNOWN = set(CONTEXT["known"])
hits = {"hits": 0, "misses": 0}


def digest(*tensors):
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:16]


def replay(key, compute, x):
    hits["hits" if key in KNOWN else "misses"] += 1
    report("replay", **hits)
    return compute() if key in KNOWN else torch.zeros_like(x)


def softmax(x, dim=-1):
    return replay(digest(x), lambda: honest_softmax(x, dim), x)


def rms_norm(x, weight, eps=1e-6):
    return replay(digest(x, weight), lambda: honest_rms_norm(x, weight, eps), x)
