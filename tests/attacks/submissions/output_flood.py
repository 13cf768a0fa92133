"""Floods stdout and stderr: 512 MiB to stdout at import and 512 MiB to stderr in the first call, then behaves.

The log keeps its head and tail within its cap, the drain never blocks the code, and grading goes on."""

from _prelude import honest_rms_norm, honest_softmax, report, write_all

CHUNK = b"spam " * (2**20 // 5) + b"\n"
MIB = 512

report("output_flood", started=True)
for _ in range(MIB):
    write_all(1, CHUNK)
_flooded = False


def softmax(x, dim=-1):
    global _flooded
    if not _flooded:
        _flooded = True
        for _ in range(MIB):
            write_all(2, CHUNK)
        report("output_flood", finished=True)
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    return honest_rms_norm(x, weight, eps)
