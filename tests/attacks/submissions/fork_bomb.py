"""A fork bomb in the first call: every process forks as fast as it can and spins; the caller spins too.

The pids cgroup (or RLIMIT_NPROC) stops the forking, the per-call timeout ends the run, and the kill takes the
whole namespace with it: nothing of the sandbox uid may be left afterwards.
"""

import os

from _prelude import report


def bomb():
    forked = 0
    while True:
        try:
            if os.fork() == 0:
                forked = 0
            else:
                forked += 1
        except OSError:
            if forked >= 0:
                report("fork_bomb", pid=os.getpid(), forked=forked, refused=True)
                forked = -(10**9)


def softmax(x, dim=-1):
    bomb()


def rms_norm(x, weight, eps=1e-6):
    bomb()
