"""Replaces the runner's first reply with a frame of the right size class but absurd shape: the correct result
plus CONTEXT["tensors"] one-byte tensors nobody asked for (a ~20 MB message, well under the byte limit).

Decoding it naively costs the trusted grader seconds and hundreds of megabytes per message; a grader that
counts the tensors a message declares refuses it before safetensors allocates any. Everything it computes is
correct, so the only way to lose points here is for the grader to refuse the message.
"""

import json
import struct

import torch
from _prelude import (
    CONTEXT,
    honest_rms_norm,
    honest_softmax,
    protocol_fd,
    protocol_module,
    report,
    runner_channel,
    write_all,
)

COUNT = CONTEXT["tensors"]
channel = runner_channel()
real_send = channel.send
_flooded = False


def flood_frame(header, result):
    data = result.contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
    index = {"t0": {"dtype": "F32", "shape": list(result.shape), "data_offsets": [0, len(data)]}}
    for i in range(COUNT):
        index[f"x{i}"] = {"dtype": "U8", "shape": [1], "data_offsets": [len(data) + i, len(data) + i + 1]}
    index_bytes = json.dumps(index, separators=(",", ":")).encode()
    index_bytes += b" " * (-len(index_bytes) % 8)
    blob = struct.pack("<Q", len(index_bytes)) + index_bytes + data + b"\0" * COUNT
    head = json.dumps({**header, "value": {"$tensor": "t0"}}, separators=(",", ":")).encode()
    protocol = protocol_module()
    return protocol.PREFIX.pack(protocol.MAGIC, protocol.VERSION, len(head), len(blob)) + head + blob


def flooding_send(header, tensors=None, **options):
    global _flooded
    if not _flooded and isinstance(header, dict) and header.get("op") == "result" and header.get("ok"):
        _flooded = True
        frame = flood_frame(header, tensors["t0"].float())
        report("forge_flood", tensors=COUNT, bytes=len(frame))
        write_all(protocol_fd(), frame)
        return None
    return real_send(header, tensors, **options)


channel.send = flooding_send


def softmax(x, dim=-1):
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    return honest_rms_norm(x, weight, eps)
