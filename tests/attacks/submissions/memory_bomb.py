"""Allocates and touches memory until something stops it: the memory cgroup's OOM killer (or, without one,
RLIMIT_AS's MemoryError, after which it holds on to what it has and spins)."""

import torch
from _prelude import report

hoard = []


def softmax(x, dim=-1):
    try:
        while True:
            hoard.append(torch.ones(16 * 2**20))  # 64 MiB, touched
            if len(hoard) % 8 == 0:
                report("memory_bomb", mib=64 * len(hoard))
    except MemoryError:
        report("memory_bomb", mib=64 * len(hoard), memory_error=True)
        while True:
            pass


def rms_norm(x, weight, eps=1e-6):
    return softmax(x)
