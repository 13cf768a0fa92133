"""Returns placeholders that a background thread fills with the right answer a moment later, and leaves a
daemon behind (double fork, new session, SIGTERM and SIGHUP ignored) plus a non-daemon thread and an atexit
hook that never finish.

The result is serialised when the function returns, so the grader sees the placeholders; the whole process
tree goes when the run ends.
"""

import atexit
import os
import signal
import threading
import time

import torch
from _prelude import honest_rms_norm, honest_softmax, report


def daemonize():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            while True:
                time.sleep(3600)
        os._exit(0)


daemonize()
threading.Thread(target=lambda: time.sleep(3600), daemon=False).start()
atexit.register(lambda: time.sleep(3600))
report("async_fill", daemon_started=True)


def later(out, compute):
    def fill():
        time.sleep(0.2)
        out.copy_(compute())

    threading.Thread(target=fill, daemon=True).start()
    return out


def softmax(x, dim=-1):
    return later(torch.zeros_like(x), lambda: honest_softmax(x, dim))


def rms_norm(x, weight, eps=1e-6):
    return later(torch.zeros_like(x), lambda: honest_rms_norm(x, weight, eps))
