"""The framed protocol: round trips, limits checked before allocation, malformed frames, timeouts, no pickle."""

import io
import json
import os
import pathlib
import pickle
import threading
import time
import tracemalloc

import pytest
import torch

from graders.protocol import (
    MAGIC,
    PREFIX,
    VERSION,
    Channel,
    MessageLimits,
    ProtocolError,
    decode_message,
    encode_message,
    pack_value,
    unpack_value,
)


@pytest.fixture
def pipe_channel():
    """A channel reading from a pipe whose write end the test controls (closed afterwards)."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=0)
    writer = os.fdopen(write_fd, "wb", buffering=0)
    sink = io.BytesIO()
    yield Channel(reader, sink, max_message_bytes=1 << 20), writer
    for stream in (reader, writer):
        if not stream.closed:
            stream.close()


def frame(header_bytes: bytes, blob: bytes = b"", *, magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    return PREFIX.pack(magic, version, len(header_bytes), len(blob)) + header_bytes + blob


def sample_value():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "f64": torch.randn(3).double(),
        "i64": torch.arange(7),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),  # not contiguous
        "views": [base[0], base[1:3]],  # share one storage
        "nested": [1, 2.5, "three", None, True, {"deep": [base]}],
        "tuple": (1, 2),
    }


def assert_same(actual, expected):
    if isinstance(expected, torch.Tensor):
        assert type(actual) is torch.Tensor
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert torch.equal(actual, expected)
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_same(actual[key], expected[key])
    else:
        assert type(actual) is type(expected) and actual == expected


def test_nested_values_with_tensors_of_many_dtypes_round_trip():
    value = sample_value()
    packed, tensors = pack_value(value)
    header, received = decode_message(encode_message({"op": "x", "value": packed}, tensors))
    assert_same(unpack_value(header["value"], received), value)


def test_round_trip_over_a_pipe_with_a_large_tensor():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as reader, os.fdopen(write_fd, "wb", buffering=0) as writer:
        receiver = Channel(reader, io.BytesIO(), default_timeout=30)
        sender = Channel(io.BytesIO(), writer, default_timeout=30)
        big = torch.randn(1024, 1024)  # 4 MiB: far more than a pipe buffer holds
        thread = threading.Thread(
            target=sender.send, args=({"op": "big", "value": {"$tensor": "x"}}, {"x": big})
        )
        thread.start()
        header, tensors = receiver.recv()
        thread.join()
    assert header == {"op": "big", "value": {"$tensor": "x"}}
    assert torch.equal(tensors["x"], big)


def test_the_same_tensor_twice_is_sent_once_and_aliased_on_arrival():
    x = torch.ones(3)
    packed, tensors = pack_value([x, x])
    assert len(tensors) == 1
    header, received = decode_message(encode_message({"v": packed}, tensors))
    first, second = unpack_value(header["v"], received)
    assert first is second


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (torch.nn.Parameter(torch.ones(2)), "not a subclass"),
        (object(), "cannot be sent"),
        ({1: torch.ones(1)}, "only str keys"),
        ({"$tensor": "t0"}, "reserved key"),
        (torch.ones(2, dtype=torch.complex128), "dtype torch.complex128"),
        (torch.eye(2).to_sparse(), "only dense tensors"),
    ],
    ids=["parameter", "object", "int-key", "reserved-key", "complex", "sparse"],
)
def test_pack_value_rejects_what_cannot_be_sent(value, complaint):
    with pytest.raises(TypeError, match=complaint):
        pack_value([value], name="the result of f")


def test_encode_message_rejects_non_tensor_objects():
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor"):
        encode_message({}, {"x": [1, 2]})


def test_oversized_header_is_rejected_before_reading_or_allocating(pipe_channel):
    channel, writer = pipe_channel
    writer.write(PREFIX.pack(MAGIC, VERSION, 2**32 - 1, 0))  # nothing else follows; the write end stays open
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            channel.recv(timeout=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_oversized_blob_is_rejected_before_reading_or_allocating(pipe_channel):
    channel, writer = pipe_channel
    writer.write(PREFIX.pack(MAGIC, VERSION, 2, 2**63))
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            channel.recv(timeout=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (frame(b"{}", magic=b"PK\x03\x04"), "magic"),
        (frame(b"{}", version=99), "version"),
        (frame(b"[1, 2]"), "JSON object"),
        (frame(b'"text"'), "JSON object"),
        (frame(b"{not json}"), "not valid UTF-8 JSON"),
        (frame(b'{"a": "\xff"}'), "not valid UTF-8 JSON"),
        (frame(b"[" * 20_000 + b"]" * 20_000), "not valid UTF-8 JSON"),
        (frame(b"{}", b"not safetensors at all"), "safetensors"),
    ],
    ids=["magic", "version", "array", "string", "syntax", "utf8", "deep-nesting", "blob"],
)
def test_malformed_frames_raise_protocol_error(pipe_channel, data, complaint):
    channel, writer = pipe_channel
    writer.write(data)
    with pytest.raises(ProtocolError, match=complaint):
        channel.recv(timeout=5)


def test_channel_stays_unusable_after_a_protocol_error(pipe_channel):
    channel, writer = pipe_channel
    writer.write(frame(b"{}", magic=b"XXXX") + frame(b"{}"))
    with pytest.raises(ProtocolError):
        channel.recv(timeout=5)
    with pytest.raises(ProtocolError, match="can no longer be used"):
        channel.recv(timeout=5)


@pytest.mark.parametrize("cut", [0, 5, PREFIX.size + 3, PREFIX.size + 10])
def test_truncated_frame_raises_eof_error(pipe_channel, cut):
    channel, writer = pipe_channel
    data = encode_message({"op": "call", "id": 1}, {"x": torch.ones(4)})
    writer.write(data[:cut])
    writer.close()
    with pytest.raises(EOFError):
        channel.recv(timeout=5)


def test_recv_times_out_promptly_when_the_peer_is_silent(pipe_channel):
    channel, _writer = pipe_channel
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2


def test_recv_times_out_when_a_frame_stops_half_way(pipe_channel):
    channel, writer = pipe_channel
    writer.write(encode_message({"op": "x"}, {})[:-2])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0.3)
    assert time.monotonic() - started < 2
    with pytest.raises(ProtocolError, match="half-way"):
        channel.recv(timeout=0.3)


def test_send_times_out_when_the_peer_stops_reading():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0), os.fdopen(write_fd, "wb", buffering=0) as writer:
        channel = Channel(io.BytesIO(), writer)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            channel.send({"op": "x"}, {"x": torch.zeros(8 << 20, dtype=torch.uint8)}, timeout=0.3)
        assert time.monotonic() - started < 2


def test_send_to_a_closed_peer_raises_eof_error():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with os.fdopen(write_fd, "wb", buffering=0) as writer, pytest.raises(EOFError):
        Channel(io.BytesIO(), writer).send({"op": "x"}, timeout=1)


class _Detonator:
    """Unpickling this calls Path.touch on the marker: proof that a pickle was loaded."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("where", ["blob", "header"])
def test_pickle_payloads_are_never_unpickled(pipe_channel, tmp_path, where):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Detonator(marker))
    channel, writer = pipe_channel
    writer.write(frame(b"{}", payload) if where == "blob" else frame(payload))
    with pytest.raises(ProtocolError):
        channel.recv(timeout=5)
    assert not marker.exists()


def test_torch_save_archives_are_not_accepted_as_tensors(pipe_channel):
    buffer = io.BytesIO()
    torch.save({"x": torch.ones(2)}, buffer)
    channel, writer = pipe_channel
    writer.write(frame(b"{}", buffer.getvalue()))
    with pytest.raises(ProtocolError, match="safetensors"):
        channel.recv(timeout=5)


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ({"$tensor": "missing"}, "was not sent"),
        ({"$tensor": 3}, "malformed tensor reference"),
        ({"$tensor": "x", "extra": 1}, "malformed tensor reference"),
        ({"$tensor": "x", "device": "/dev/sda"}, "malformed tensor device"),
        (json.loads("[" * 100 + "]" * 100), "nests values"),
    ],
    ids=["missing", "non-string", "extra-key", "device", "depth"],
)
def test_unpack_value_rejects_malformed_references(value, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        unpack_value(value, {"x": torch.ones(1)})


LIMITS = MessageLimits(max_header_bytes=1024, max_tensors=2, max_tensor_elements=100)


def test_a_message_within_the_limits_is_received(pipe_channel):
    channel, writer = pipe_channel
    tensors = {"a": torch.ones(50), "b": torch.zeros(5, 10, dtype=torch.float64)}
    writer.write(encode_message({"op": "x"}, tensors))
    header, received = channel.recv(timeout=5, limits=LIMITS)
    assert header == {"op": "x"} and torch.equal(received["b"], tensors["b"])


@pytest.mark.parametrize(
    ("header", "tensors", "complaint"),
    [
        ({"op": "x", "pad": "y" * 2000}, {}, "exceeds the limit of 1024 bytes"),
        ({}, {name: torch.ones(1) for name in "abc"}, "holds 3 tensors, more than the 2 allowed"),
        ({}, {"a": torch.ones(60), "b": torch.ones(60)}, "more than the 100 tensor elements allowed"),
        ({}, {"a": torch.ones(100_000)}, "tensor data of 400"),
    ],
    ids=["header", "tensor-count", "elements", "blob-bytes"],
)
def test_limits_are_checked_before_any_tensor_is_loaded(
    pipe_channel, monkeypatch, header, tensors, complaint
):
    channel, writer = pipe_channel
    data = encode_message(header, tensors)
    threading.Thread(target=writer.write, args=(data,), daemon=True).start()

    def must_not_load(blob):
        raise AssertionError("safetensors.torch.load was called on an oversized message")

    monkeypatch.setattr("graders.protocol.safetensors.torch.load", must_not_load)
    with pytest.raises(ProtocolError, match=complaint):
        channel.recv(timeout=5, limits=LIMITS)


def test_a_message_limited_to_no_tensors_refuses_any(pipe_channel):
    channel, writer = pipe_channel
    writer.write(encode_message({"op": "ready"}, {"x": torch.ones(1)}))
    with pytest.raises(ProtocolError, match="exceeds the limit of 0 bytes"):
        channel.recv(timeout=5, limits=MessageLimits(1024, 0, 0))


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"max_header_bytes": 1, "max_tensors": 1},
        {"max_header_bytes": 1, "max_tensors": 1, "max_tensor_elements": -1},
    ],
    ids=["none", "list", "missing-field", "negative"],
)
def test_message_limits_from_json_refuse_malformed_values(value):
    with pytest.raises(ProtocolError, match=r"malformed message limits|must be an integer"):
        MessageLimits.from_json(value)
    assert MessageLimits.from_json(LIMITS.to_json()) == LIMITS


def test_non_blocking_reader_without_timeout_waits_for_data():
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    with os.fdopen(read_fd, "rb", buffering=0) as reader, os.fdopen(write_fd, "wb", buffering=0) as writer:
        channel = Channel(reader, io.BytesIO())
        timer = threading.Timer(0.2, writer.write, args=(encode_message({"op": "late"}, {}),))
        timer.start()
        header, _ = channel.recv()
        timer.join()
    assert header == {"op": "late"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")
def test_gpu_tensors_travel_with_their_device():
    x = torch.randn(4, 4, device="cuda")
    packed, tensors = pack_value({"x": x})
    assert packed == {"x": {"$tensor": "t0", "device": str(x.device)}}
    header, received = decode_message(encode_message({"v": packed}, tensors))
    value = unpack_value(header["v"], received)["x"]
    assert value.device == x.device and torch.equal(value, x)
