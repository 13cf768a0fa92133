"""Slow but correct, with a doctored clock: every timed softmax sleeps CONTEXT["sleep_s"], while time.perf_counter,
time.monotonic and friends (and the runner's own copy of its clock) are made to stand still.

The sandbox's own figure drops to nothing; the leaderboard's figure is taken by the grader around each call.
"""

import sys
import time

from _prelude import CONTEXT, honest_rms_norm, honest_softmax, report

SLEEP_S = CONTEXT["sleep_s"]
real_sleep = time.sleep
frozen = time.perf_counter()

for name in ("perf_counter", "monotonic", "time", "process_time", "thread_time"):
    setattr(time, name, lambda: frozen)
for name in ("perf_counter_ns", "monotonic_ns", "time_ns"):
    setattr(time, name, lambda: int(frozen * 1e9))
runner = sys.modules.get("__main__")
for name in ("_clock", "_now", "perf_counter"):
    if hasattr(runner, name):
        setattr(runner, name, lambda: frozen)
report("patch_clock", frozen=time.perf_counter() == time.perf_counter())


def softmax(x, dim=-1):
    if x.numel() >= 256 * 1024:  # only the leaderboard's shape: the tests themselves stay quick
        real_sleep(SLEEP_S)
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    return honest_rms_norm(x, weight, eps)
