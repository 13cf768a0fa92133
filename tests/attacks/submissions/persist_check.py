"""Looks for anything an earlier submission (recon.py) left behind: files, shared memory, a sitecustomize.

Every place recon.py wrote to, and every writable place in general, must be fresh for a new submission.
Computes correct results: its 10 points are its own.
"""

import ctypes
import errno
import glob
import importlib.util
import os

from _prelude import CONTEXT, honest_rms_norm, honest_softmax, report

TOKEN = CONTEXT["persist_token"]

found = [
    path for top in ("/tmp", "/dev/shm", "/work") for path in glob.glob(f"{top}/**/*{TOKEN}*", recursive=True)
]
found += [path for path in (f"/persist-{TOKEN}", f"/var/tmp/persist-{TOKEN}") if os.path.exists(path)]
strangers = {
    "/tmp": sorted(os.listdir("/tmp")),
    "/dev/shm": sorted(os.listdir("/dev/shm")),
    "/work": sorted(os.listdir("/work")),
}
libc = ctypes.CDLL(None, use_errno=True)
shmid = libc.shmget(ctypes.c_int(int(TOKEN[:7], 16)), ctypes.c_size_t(0), ctypes.c_int(0))
report(
    "persist",
    found=sorted(set(found)),
    listings=strangers,
    sysv_shm="found" if shmid >= 0 else errno.errorcode.get(ctypes.get_errno(), "?"),
    sitecustomize=importlib.util.find_spec("sitecustomize") is not None,
)


def softmax(x, dim=-1):
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    return honest_rms_norm(x, weight, eps)
