"""Fills every writable place in the first call: /tmp and /dev/shm until they are full, /work with
CONTEXT["work_files"] files, each until the file-size limit stops it. Then behaves.

/tmp and /dev/shm are private tmpfs mounts of a fixed size; a file cannot outgrow RLIMIT_FSIZE; the workdir
is deleted with the job. (The workdir as a whole has no quota: docs/attacks.md, "open".)
"""

import errno
import os
import signal

from _prelude import CONTEXT, honest_rms_norm, honest_softmax, report

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of dying of the signal
BLOCK = b"\xa5" * 2**20


def fill(path):
    written = 0
    try:
        with open(path, "wb", buffering=0) as handle:
            while True:
                written += handle.write(BLOCK)
    except OSError as exc:
        return written, errno.errorcode.get(exc.errno, str(exc.errno))


def fill_dir(directory, max_files):
    """Files of up to the size limit, one after the other, until the space runs out (or max_files)."""
    total, sizes = 0, []
    for i in range(max_files):
        written, error = fill(f"{directory}/fill-{i}")
        total += written
        sizes.append(written)
        if error != "EFBIG":
            return {"total": total, "files": sizes, "stopped_by": error}
    return {"total": total, "files": sizes, "stopped_by": "max_files"}


_filled = False


def softmax(x, dim=-1):
    global _filled
    if not _filled:
        _filled = True
        results = {"tmp": fill_dir("/tmp", 64), "shm": fill_dir("/dev/shm", 64)}
        results["work"] = fill_dir("/work", CONTEXT["work_files"])
        for directory in ("/tmp", "/dev/shm"):
            for name in os.listdir(directory):
                os.unlink(f"{directory}/{name}")  # give the memory back for the rest of the run
        report("disk_filler", **results)
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    return honest_rms_norm(x, weight, eps)
