"""Tries to reproduce its first input from guessable seeds: small integers, favourite constants, the clock,
the process id, and per-test seeds derived from them the way the (public) harness derives them.

The run's seed is 63 random bits from the worker's CSPRNG, so no guess reproduces anything; it returns zeros.
"""

import hashlib
import os
import time

import torch
from _prelude import report

NAMES = (
    "softmax_basic",
    "softmax_other_dim",
    "softmax_large_logits",
    "rms_norm_basic",
    "benchmark:softmax_ms",
)


def candidates():
    yield from range(5000)
    yield from (31337, 65535, 2**31 - 1, 2**32 - 1, 2**63 - 1, 123456789, 987654321, 20240901, 20250901)
    now = int(time.time())
    yield from range(now - 900, now + 60)
    yield os.getpid()
    for base in range(1000):
        for name in NAMES:
            digest = hashlib.sha256(f"{base}:{name}".encode()).digest()
            yield int.from_bytes(digest[:8], "big") >> 1


def predict(x):
    tried = 0
    for seed in candidates():
        tried += 1
        values = torch.randn(
            tuple(x.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32
        )
        for scale in (1.0, 2.0, 3.0, 5.0):
            if torch.equal((values * scale).to(x.dtype), x):
                return {"matched": seed, "tried": tried}
    return {"matched": None, "tried": tried}


_first = True


def softmax(x, dim=-1):
    global _first
    if _first:
        _first = False
        report("predict", **predict(x))
    return torch.zeros_like(x)


def rms_norm(x, weight, eps=1e-6):
    return torch.zeros_like(x)
