"""The framed message protocol between the trusted grader and the runner stub in the sandbox.

This file is copied alone (beside runner.py) into the sandbox, so it imports only the standard library, torch
and safetensors, and nothing package-relative.

Frame layout (all integers big-endian)::

    offset  size  field
    0       4     magic b"LLMG"
    4       2     protocol version (u16, currently 1)
    6       4     header length H in bytes (u32)
    10      8     tensor blob length B in bytes (u64)
    18      H     header: UTF-8 JSON, always an object
    18+H    B     tensors: a safetensors blob (safetensors.torch.save); B == 0 when there are no tensors

Both lengths are checked against the channel's limits before anything is read or allocated. Nothing from the
other side is ever unpickled: the header is parsed by ``json`` and the blob by ``safetensors``. A receiver may
pass :class:`MessageLimits` to :meth:`Channel.recv`; then the header size, the number of tensors and their total
element count are checked too, the last two from the blob's own index before ``safetensors`` allocates anything.

Header values refer to tensors as ``{"$tensor": "<name>"}`` (plus ``"device": "cuda:0"`` for tensors that are
not on the CPU). :func:`pack_value` turns a nested Python value (None, bool, int, float, str, list, tuple, dict
with str keys, torch.Tensor, bytes) into such a JSON value and a tensor dict; :func:`unpack_value` reverses it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import select
import stat
import struct
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

import safetensors.torch
import torch

MAGIC = b"LLMG"
VERSION = 1
PREFIX = struct.Struct(">4sHIQ")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Headers describe calls and small values; anything big belongs in the tensor blob.
MAX_HEADER_BYTES = 16 * 1024 * 1024
# Deeper nesting than this is never needed to describe a call, and unbounded nesting is a recursion bomb.
MAX_DEPTH = 64
TENSOR_KEY = "$tensor"
# Header values refer to byte strings as ``{"$bytes": "<base64>"}`` (BPE vocabularies and merges are bytes).
BYTES_KEY = "$bytes"
RESERVED_KEYS = (TENSOR_KEY, BYTES_KEY)

# The dtypes safetensors can carry and the course uses; anything else is refused with a clear message.
SENDABLE_DTYPES = frozenset(
    dtype
    for dtype in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        getattr(torch, "float8_e4m3fn", None),
        getattr(torch, "float8_e5m2", None),
    )
    if dtype is not None
)
DTYPES_BY_NAME = {str(dtype).removeprefix("torch."): dtype for dtype in SENDABLE_DTYPES}
# Bytes per element of each safetensors dtype code: what a blob's own header may declare.
_SAFETENSORS_ITEM_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
# The part of a safetensors header one tensor may take (its name, dtype, shape, offsets), and the fixed rest.
_SAFETENSORS_BYTES_PER_TENSOR = 512
_SAFETENSORS_FIXED_BYTES = 1024
_DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]{1,3})?")
_IO_CHUNK = 1 << 20
PIPE_BUFFER_BYTES = 1 << 20


class ProtocolError(Exception):
    """The other side sent something malformed, oversized or unexpected."""


@dataclasses.dataclass(frozen=True)
class MessageLimits:
    """Caps on one message beyond the channel's byte limit: its JSON header, tensor count and total elements."""

    max_header_bytes: int
    max_tensors: int
    max_tensor_elements: int

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_tensors", "max_tensor_elements"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"MessageLimits.{name} must be an integer >= 0, got {value!r}")

    @property
    def max_blob_bytes(self) -> int:
        """The largest safetensors blob that can hold at most these tensors and elements."""
        if self.max_tensors == 0:
            return 0
        header = self.max_tensors * _SAFETENSORS_BYTES_PER_TENSOR + _SAFETENSORS_FIXED_BYTES
        return 8 + header + 8 * self.max_tensor_elements

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> MessageLimits:
        """Parse :meth:`to_json` output; ProtocolError if it is anything else."""
        fields = {"max_header_bytes", "max_tensors", "max_tensor_elements"}
        if type(value) is not dict or set(value) != fields:
            raise ProtocolError("malformed message limits")
        try:
            return cls(**value)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", "")
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in ("builtins", "") else f"{module}.{name}"


def unsendable_reason(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` cannot travel in a message, or None if it can."""
    if type(tensor) is not torch.Tensor:
        return f"is a {_type_name(tensor)}, expected a torch.Tensor (a plain tensor, not a subclass)"
    if tensor.layout != torch.strided:
        return f"is a tensor with layout {tensor.layout}; only dense tensors can be sent (use .to_dense())"
    if tensor.device.type not in ("cpu", "cuda"):
        return f"is a tensor on the {tensor.device.type} device; only CPU and GPU tensors can be sent"
    if tensor.dtype not in SENDABLE_DTYPES:
        return f"is a tensor of dtype {tensor.dtype}, which cannot be sent"
    return None


def _prepare_tensor(tensor: torch.Tensor, seen_storages: set[int]) -> torch.Tensor:
    """A dense, contiguous CPU tensor that shares memory with no tensor prepared before it."""
    reason = unsendable_reason(tensor)
    if reason is not None:
        raise TypeError(reason)
    prepared = tensor.detach().resolve_conj().resolve_neg().cpu().contiguous()
    if prepared.numel() == 0:
        return prepared
    storage = prepared.untyped_storage().data_ptr()
    if storage in seen_storages:
        # safetensors refuses tensors that share memory (views of one buffer, or one tensor sent twice).
        prepared = prepared.clone()
        storage = prepared.untyped_storage().data_ptr()
    seen_storages.add(storage)
    return prepared


def _encode_parts(header: dict, tensors: Mapping[str, torch.Tensor]) -> tuple[bytes, bytes, bytes]:
    if not isinstance(header, dict):
        raise TypeError(f"a message header must be a dict, got a {_type_name(header)}")
    try:
        header_bytes = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"the message header is not JSON-serialisable: {exc}") from None
    prepared: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got a {_type_name(name)}")
        try:
            prepared[name] = _prepare_tensor(tensor, seen_storages)
        except TypeError as exc:
            raise TypeError(f"tensor {name!r} {exc}") from None
    blob = safetensors.torch.save(prepared) if prepared else b""
    prefix = PREFIX.pack(MAGIC, VERSION, len(header_bytes), len(blob))
    return prefix, header_bytes, blob


def encode_message(header: dict, tensors: Mapping[str, torch.Tensor]) -> bytes:
    """One complete frame holding ``header`` (a JSON-serialisable dict) and ``tensors``."""
    return b"".join(_encode_parts(header, tensors))


def _check_lengths(
    header_len: int, blob_len: int, max_message_bytes: int, limits: MessageLimits | None = None
) -> None:
    if header_len < 2:
        raise ProtocolError(f"message header of {header_len} bytes is too short to be a JSON object")
    header_cap = min(MAX_HEADER_BYTES, max_message_bytes)
    if limits is not None:
        header_cap = min(header_cap, limits.max_header_bytes)
    if header_len > header_cap:
        raise ProtocolError(f"message header of {header_len} bytes exceeds the limit of {header_cap} bytes")
    if header_len + blob_len > max_message_bytes:
        raise ProtocolError(
            f"message of {header_len + blob_len} bytes exceeds the limit of {max_message_bytes} bytes"
        )
    if limits is not None and blob_len > limits.max_blob_bytes:
        raise ProtocolError(
            f"tensor data of {blob_len} bytes exceeds the limit of {limits.max_blob_bytes} bytes "
            f"({limits.max_tensors} tensors, {limits.max_tensor_elements} elements)"
        )


def _parse_prefix(
    prefix: bytes, max_message_bytes: int, limits: MessageLimits | None = None
) -> tuple[int, int]:
    magic, version, header_len, blob_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("the data does not start with the protocol's magic bytes")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (expected {VERSION})")
    _check_lengths(header_len, blob_len, max_message_bytes, limits)
    return header_len, blob_len


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_blob_header(blob: bytes, limits: MessageLimits) -> None:
    """Count the tensors and elements a safetensors blob declares, before safetensors allocates any of them."""
    if len(blob) < 8:
        raise ProtocolError("the tensor data is too short to be a safetensors blob")
    declared = int.from_bytes(blob[:8], "little")
    cap = limits.max_tensors * _SAFETENSORS_BYTES_PER_TENSOR + _SAFETENSORS_FIXED_BYTES
    if declared > min(cap, len(blob) - 8):
        raise ProtocolError(f"the tensor data declares a {declared}-byte index, more than it may hold")
    try:
        index = json.loads(blob[8 : 8 + declared].decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("the tensor data's index is not valid JSON") from None
    if type(index) is not dict:
        raise ProtocolError("the tensor data's index is not a JSON object")
    entries = [value for key, value in index.items() if key != "__metadata__"]
    if len(entries) > limits.max_tensors:
        raise ProtocolError(
            f"the message holds {len(entries)} tensors, more than the {limits.max_tensors} allowed"
        )
    elements = 0
    for entry in entries:
        shape = entry.get("shape") if type(entry) is dict else None
        if (
            type(shape) is not list
            or len(shape) > MAX_DEPTH
            or not all(type(size) is int and size >= 0 for size in shape)
            or entry.get("dtype") not in _SAFETENSORS_ITEM_BYTES
        ):
            raise ProtocolError("the tensor data's index describes a tensor it cannot hold")
        elements += math.prod(shape)
        if elements > limits.max_tensor_elements:
            raise ProtocolError(
                f"the message holds more than the {limits.max_tensor_elements} tensor elements allowed"
            )


def _decode_body(
    header_bytes: bytes, blob: bytes, limits: MessageLimits | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"the message header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"the message header must be a JSON object, got {type(header).__name__}")
    if not blob:
        return header, {}
    if limits is not None:
        _check_blob_header(blob, limits)
    try:
        tensors = safetensors.torch.load(blob)
    except Exception as exc:
        # safetensors raises its own error type for every malformed input; none of it is the grader's fault.
        raise ProtocolError(
            f"the tensor data is not a valid safetensors blob ({type(exc).__name__})"
        ) from None
    return header, tensors


def decode_message(
    data: bytes, *, max_message_bytes: int = MAX_MESSAGE_BYTES, limits: MessageLimits | None = None
) -> tuple[dict, dict]:
    """Parse one complete frame produced by :func:`encode_message`."""
    if len(data) < PREFIX.size:
        raise ProtocolError("the message is shorter than the frame prefix")
    header_len, blob_len = _parse_prefix(bytes(data[: PREFIX.size]), max_message_bytes, limits)
    end = PREFIX.size + header_len + blob_len
    if len(data) != end:
        raise ProtocolError(f"the frame declares {end} bytes but {len(data)} were given")
    header_bytes = bytes(data[PREFIX.size : PREFIX.size + header_len])
    return _decode_body(header_bytes, bytes(data[PREFIX.size + header_len :]), limits)


def pack_value(obj: Any, *, name: str = "the value") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested value into a JSON value and the tensors it refers to.

    Raises TypeError naming the offending object and where it sits, with ``name`` standing for ``obj``
    (e.g. ``"softmax's result[1] is a numpy.ndarray, ..."``).
    """
    tensors: dict[str, torch.Tensor] = {}
    names: dict[int, str] = {}

    def pack(value: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise TypeError(f"{where} is nested more than {MAX_DEPTH} levels deep")
        if value is None or type(value) is bool:
            return value
        if isinstance(value, torch.Tensor):
            reason = unsendable_reason(value)
            if reason is not None:
                raise TypeError(f"{where} {reason}")
            tensor_name = names.get(id(value))
            if tensor_name is None:
                tensor_name = f"t{len(tensors)}"
                names[id(value)] = tensor_name
                tensors[tensor_name] = value
            ref = {TENSOR_KEY: tensor_name}
            if value.device.type != "cpu":
                ref["device"] = str(value.device)
            return ref
        # Subclasses (IntEnum, numpy.float64, ...) become the base type without calling overridable methods.
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
        if isinstance(value, int):
            return int.__int__(value)
        if isinstance(value, float):
            return float.__float__(value)
        if type(value) in (list, tuple):
            return [pack(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
        if type(value) is dict:
            packed = {}
            for key, item in value.items():
                if type(key) is not str:
                    raise TypeError(f"{where} has a key of type {_type_name(key)}; only str keys can be sent")
                if key in RESERVED_KEYS:
                    raise TypeError(f"{where} uses the reserved key {key!r}")
                packed[key] = pack(item, f"{where}[{key!r}]", depth + 1)
            return packed
        raise TypeError(
            f"{where} is a {_type_name(value)}, which cannot be sent; "
            "use torch.Tensor, int, float, bool, str, bytes, None, list, tuple or dict"
        )

    return pack(obj, name, 0), tensors


def _tensor_ref(value: dict, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    name = value[TENSOR_KEY]
    if not isinstance(name, str) or set(value) - {TENSOR_KEY, "device"}:
        raise ProtocolError("malformed tensor reference in the message header")
    if name not in tensors:
        raise ProtocolError(f"the message header refers to a tensor {name[:64]!r} that was not sent")
    tensor = tensors[name]
    device = value.get("device", "cpu")
    if not isinstance(device, str) or not _DEVICE_PATTERN.fullmatch(device):
        raise ProtocolError("malformed tensor device in the message header")
    if device == "cpu":
        return tensor
    if not torch.cuda.is_available():
        raise ProtocolError(f"a tensor was sent from device {device}, but no GPU is available here")
    try:
        return tensor.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ProtocolError(
            f"a tensor was sent from device {device}, which cannot be used here: {exc}"
        ) from None


def _bytes_ref(value: dict) -> bytes:
    encoded = value[BYTES_KEY]
    if not isinstance(encoded, str) or len(value) != 1:
        raise ProtocolError("malformed byte string in the message header")
    try:
        return base64.b64decode(encoded.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError("malformed byte string in the message header") from None


def unpack_value(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the value :func:`pack_value` produced, validating every node (ProtocolError if malformed)."""

    def unpack(node: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"the message nests values more than {MAX_DEPTH} levels deep")
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is list:
            return [unpack(item, depth + 1) for item in node]
        if type(node) is dict:
            if TENSOR_KEY in node:
                return _tensor_ref(node, tensors)
            if BYTES_KEY in node:
                return _bytes_ref(node)
            return {key: unpack(item, depth + 1) for key, item in node.items()}
        raise ProtocolError(f"the message holds a value of unexpected type {type(node).__name__}")

    return unpack(value, 0)


def _enlarge_pipe(fd: int | None) -> None:
    """Ask for a 1 MiB pipe buffer (the unprivileged Linux maximum): fewer context switches per tensor."""
    if fd is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_BUFFER_BYTES:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BUFFER_BYTES)


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class Channel:
    """Send and receive frames over a pair of byte streams (usually pipes).

    When the streams have file descriptors the channel reads and writes the descriptors directly (bypassing
    any Python-level buffering), so ``recv`` and ``send`` can honour timeouts with ``poll``. Streams without a
    descriptor (e.g. ``io.BytesIO``) work too, but without timeouts.

    A timeout of ``None`` in ``send``/``recv`` means the channel's ``default_timeout`` (which may itself be
    ``None``: wait forever). After a malformed frame, or a timeout in the middle of a frame, the stream is out of
    step and every later call raises :class:`ProtocolError`.
    """

    def __init__(
        self,
        reader: BinaryIO,
        writer: BinaryIO,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        default_timeout: float | None = None,
    ) -> None:
        if max_message_bytes < PREFIX.size:
            raise ValueError("max_message_bytes is too small to hold any message")
        self._reader = reader
        self._writer = writer
        self._read_fd = _fileno(reader)
        self._write_fd = _fileno(writer)
        for fd in (self._read_fd, self._write_fd):
            _enlarge_pipe(fd)
        self.max_message_bytes = max_message_bytes
        self.default_timeout = default_timeout
        # Set once the stream is out of step: (exception class to raise, reason).
        self._broken: tuple[type[Exception], str] | None = None

    # -- sending -------------------------------------------------------------------------------------------
    def send(
        self,
        header: dict,
        tensors: Mapping[str, torch.Tensor] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Send one frame. Raises TimeoutError if the peer stops reading, EOFError if it has gone away."""
        self._check_usable()
        prefix, header_bytes, blob = _encode_parts(header, tensors or {})
        _check_lengths(len(header_bytes), len(blob), self.max_message_bytes)
        deadline = self._deadline(timeout)
        try:
            self._write_all((prefix, header_bytes, blob), deadline)
        except TimeoutError:
            self._broken = (ProtocolError, "an earlier message could not be sent in time")
            raise
        except (BrokenPipeError, ConnectionResetError):
            self._broken = (EOFError, "the other side closed the channel")
            raise EOFError("the other side closed the channel") from None

    def _write_all(self, parts: tuple[bytes, ...], deadline: float | None) -> None:
        if self._write_fd is None:
            for part in parts:
                self._writer.write(part)
            self._writer.flush()
            return
        self._writer.flush()
        fd = self._write_fd
        was_blocking = os.get_blocking(fd)
        if deadline is not None:
            os.set_blocking(fd, False)
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    if deadline is not None:
                        self._wait(fd, select.POLLOUT, deadline, "the other side stopped reading")
                    try:
                        written = os.write(fd, view[:_IO_CHUNK])
                    except BlockingIOError:
                        if deadline is None:
                            self._wait(fd, select.POLLOUT, None, "")
                        continue
                    view = view[written:]
        finally:
            if deadline is not None:
                os.set_blocking(fd, was_blocking)

    # -- receiving -----------------------------------------------------------------------------------------
    def recv(
        self, timeout: float | None = None, *, limits: MessageLimits | None = None
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """Receive one frame as ``(header, tensors)``.

        Raises TimeoutError when nothing complete arrives in time, EOFError when the peer closed the channel
        (also in the middle of a frame), ProtocolError when the frame is malformed or over the limits (the
        channel's byte limit, and ``limits`` when given).
        """
        self._check_usable()
        deadline = self._deadline(timeout)
        try:
            prefix = self._read_exact(PREFIX.size, deadline, at_boundary=True)
            header_len, blob_len = _parse_prefix(bytes(prefix), self.max_message_bytes, limits)
            header_bytes = bytes(self._read_exact(header_len, deadline, at_boundary=False))
            blob = bytes(self._read_exact(blob_len, deadline, at_boundary=False)) if blob_len else b""
            return _decode_body(header_bytes, blob, limits)
        except ProtocolError as exc:
            self._broken = (ProtocolError, f"an earlier message was malformed ({exc})")
            raise
        except EOFError as exc:
            self._broken = (EOFError, str(exc))
            raise

    def _read_exact(self, size: int, deadline: float | None, *, at_boundary: bool) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            if self._read_fd is None:
                count = self._reader.readinto(view[received:])  # type: ignore[attr-defined]
            else:
                count = self._read_some(
                    view[received : received + _IO_CHUNK], deadline, received, at_boundary
                )
            if not count:
                if received or not at_boundary:
                    raise EOFError("the other side closed the channel in the middle of a message")
                raise EOFError("the other side closed the channel")
            received += count
        return buffer

    def _read_some(self, target: memoryview, deadline: float | None, received: int, at_boundary: bool) -> int:
        """One read into ``target`` once the descriptor is readable; 0 at end of stream."""
        assert self._read_fd is not None
        while True:
            if deadline is not None:
                try:
                    self._wait(self._read_fd, select.POLLIN, deadline, "no message arrived in time")
                except TimeoutError:
                    if received or not at_boundary:
                        self._broken = (ProtocolError, "a message stopped arriving half-way")
                    raise
            try:
                return os.readv(self._read_fd, [target])
            except BlockingIOError:
                # A non-blocking descriptor with nothing to read yet: wait for data (forever if no deadline).
                if deadline is None:
                    self._wait(self._read_fd, select.POLLIN, None, "")
            except (ConnectionResetError, BrokenPipeError):
                return 0
            except OSError as exc:
                raise EOFError(f"the channel cannot be read ({exc.strerror})") from None

    # -- helpers -------------------------------------------------------------------------------------------
    def _deadline(self, timeout: float | None) -> float | None:
        if timeout is None:
            timeout = self.default_timeout
        if timeout is None:
            return None
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout >= 0):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        return time.monotonic() + timeout

    @staticmethod
    def _wait(fd: int, events: int, deadline: float | None, why: str) -> None:
        """Block until ``fd`` is ready for ``events``; TimeoutError(why) once ``deadline`` passes."""
        poller = select.poll()
        poller.register(fd, events)
        while True:
            if deadline is None:
                ready = poller.poll()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(why)
                ready = poller.poll(max(1, math.ceil(remaining * 1000)))
            if not ready:
                continue
            for _, revents in ready:
                if revents & select.POLLNVAL:
                    raise EOFError("the channel's file descriptor is closed")
            # POLLHUP / POLLERR also end the wait: the read or write that follows reports what happened.
            return

    def _check_usable(self) -> None:
        if self._broken is not None:
            error_class, reason = self._broken
            raise error_class(f"the channel can no longer be used: {reason}")

    def close(self) -> None:
        """Close both streams (errors from an already-closed peer are ignored)."""
        for stream in (self._writer, self._reader):
            with contextlib.suppress(OSError):
                stream.close()
