"""Computes one answer, then tries to get by on memory: caches keyed by input pointer, by shape and by content.

Inputs are fresh tensors for every call, drawn from a per-run secret seed: a pointer or shape key returns a
stale answer for different data, a content key never sees the same data with the same question twice. And
"batch and skip" finds no batch: during its first call it watches the request channel for the inputs of
later calls, and nothing is there (the grader sends a call only after the previous answer).
"""

import hashlib
import select

import torch
from _prelude import honest_rms_norm, honest_softmax, protocol_in_fd, report

caches = {"pointer": {}, "shape": {}, "content": {}}
hits = dict.fromkeys(caches, 0)
computed = 0


def keys(fn, x):
    digest = hashlib.sha256(x.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    return {
        "pointer": (fn, x.data_ptr()),
        "shape": (fn, tuple(x.shape), x.dtype),
        "content": (fn, digest),
    }


def answer(fn, x, compute):
    global computed
    found = keys(fn, x)
    for kind, key in found.items():
        if key in caches[kind]:
            hits[kind] += 1
            report("cache", hits=hits, computed=computed)
            return caches[kind][key]
    result = compute() if computed == 0 else torch.zeros_like(x)  # the one honest answer, then none
    computed += 1
    for kind, key in found.items():
        caches[kind][key] = result
    report("cache", hits=hits, computed=computed)
    return result


def softmax(x, dim=-1):
    if computed == 0:
        readable, _, _ = select.select([protocol_in_fd()], [], [], 0.5)
        report("cache", pending_requests=bool(readable))
    return answer("softmax", x, lambda: honest_softmax(x, dim))


def rms_norm(x, weight, eps=1e-6):
    return answer("rms_norm", x, lambda: honest_rms_norm(x, weight, eps))
