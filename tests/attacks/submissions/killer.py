"""Tries to kill everything it can name: its parent, the sandbox's init, every process (kill -1), the worker's
pid, all with SIGKILL, and SIGSTOP for the parent. It is alone in its pid namespace, so it hits only itself and
its own children. Correct softmax; in rms_norm it finally kills its own process group.

Expected: the softmax tests keep their 5.5 points, the run ends as "exited" during rms_norm_basic, and the
worker and the next grading carry on.
"""

import errno
import os
import signal
import time

from _prelude import CONTEXT, honest_softmax, report


def attempt(pid, sig):
    try:
        os.kill(pid, sig)
        return "sent"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


_tried = False


def softmax(x, dim=-1):
    global _tried
    if not _tried:
        _tried = True
        child = os.fork()
        if child == 0:
            while True:
                time.sleep(1)
        results = {
            "parent_stop": attempt(os.getppid(), signal.SIGSTOP),
            "parent": attempt(os.getppid(), signal.SIGKILL),
            "init": attempt(1, signal.SIGKILL),
            "init_term": attempt(1, signal.SIGTERM),
            "worker": attempt(CONTEXT["worker_pid"], signal.SIGKILL),
            "everyone": attempt(-1, signal.SIGKILL),
        }
        _, status = os.waitpid(child, 0)
        results["child_killed_by_kill_minus_1"] = os.WIFSIGNALED(status)
        results["ppid"] = os.getppid()
        report("killer", **results)
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    report("killer", suicide=True)
    os.killpg(0, signal.SIGKILL)
