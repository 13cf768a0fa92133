"""Correct softmax; rms_norm ignores every catchable signal and then stops itself with SIGSTOP.

The grader's per-call timeout ends the run during rms_norm_basic: the softmax tests before it keep their
points (1.5 + 1 + 1.5 + 1.5), the rest are not run, and SIGKILL takes the stopped process away.
"""

import os
import signal

from _prelude import honest_softmax, report


def softmax(x, dim=-1):
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, signal.SIGUSR1, signal.SIGCONT):
        signal.signal(sig, signal.SIG_IGN)
    report("call_stop", stopping=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    return x
