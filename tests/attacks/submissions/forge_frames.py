"""Writes straight onto the runner's private protocol descriptor, in the middle of a call: one of
CONTEXT["frame"] = "oversized" (a prefix announcing exabytes), "garbage" (random bytes) or "ahead" (a
well-formed result for the call after this one, with a claim of success). Then it returns a correct result.

However the frame is made, the grader's next read is out of step with the calls it made: the run stops as a
protocol violation with nothing scored, quickly, without allocating what the prefix announces.
"""

import os
import struct

from _prelude import (
    CONTEXT,
    current_call,
    honest_rms_norm,
    honest_softmax,
    protocol_fd,
    protocol_module,
    report,
    write_all,
)

KIND = CONTEXT["frame"]


def frame_for(call):
    protocol = protocol_module()
    if KIND == "oversized":
        prefix = getattr(protocol, "PREFIX", struct.Struct(">4sHIQ"))
        return prefix.pack(protocol.MAGIC, protocol.VERSION, 2**32 - 1, 2**63)
    if KIND == "garbage":
        data = os.urandom(1 << 16)
        return b"XXXX" + data  # never the magic
    header = {"op": "result", "id": call["id"] + 1, "ok": True, "value": 1.0, "passed": True, "score": 10}
    return protocol.encode_message(header, {})


_done = False


def softmax(x, dim=-1):
    global _done
    if not _done:
        _done = True
        frame = frame_for(current_call())
        write_all(protocol_fd(), frame)
        report("forge_frames", kind=KIND, bytes=len(frame))
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    return honest_rms_norm(x, weight, eps)
