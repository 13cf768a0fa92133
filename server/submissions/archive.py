"""Validate student uploads and store them as one canonical archive.

A student sends either several plain files or exactly one archive (.zip, .tar.gz / .tgz, .tar). Every byte of it
is hostile until checked, so nothing here believes what an archive says about itself:

- sizes are counted while decompressing, a chunk at a time, against the policy's limits (headers are only used
  to refuse early, never to accept), so a zip or gzip bomb is stopped after a bounded amount of work and memory;
- every name is checked before it is used: no absolute paths, ``..``, backslashes, drive letters, empty
  components, control characters or over-long names; names are Unicode-normalised (NFC) and must stay distinct
  after case folding, so the same tree unpacks identically on any file system;
- only regular files are accepted: links, devices and pipes are refused, directories are implied by file paths;
- ``extractall`` is never called; nothing touches the disk until ``unpack``, which checks the stored blob again.

OS junk is dropped silently, and only because operating systems add it without asking and it is never
coursework: ``__MACOSX/`` (Finder's resource-fork folder) and ``.DS_Store`` (Finder's folder settings) at any
depth. Everything else must match the assignment's allowed names, or the whole upload is refused.

``collect_upload`` returns ``{relative POSIX path: content}``; ``pack`` turns that into a deterministic .tar.gz
(the blob the database stores under its sha256); the worker's ``unpack`` re-validates that blob and writes it into
a fresh scratch directory without following links.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import re
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["ArchiveError", "UploadPolicy", "collect_upload", "pack", "sha256_hex", "unpack"]

ErrorCode = Literal[
    "empty",
    "too_large",
    "too_many_files",
    "name_not_allowed",
    "unsafe_path",
    "link",
    "special_file",
    "bomb",
    "corrupt",
    "bad_name_encoding",
    "duplicate",
    "file_too_large",
]
ArchiveKind = Literal["zip", "tar", "tar.gz"]

_CHUNK = 64 * 1024
# Ratios are only judged past this much output: a few kilobytes of blank lines compress absurdly well and are
# harmless, and below it the size limits already bound the work.
_RATIO_FLOOR = 256 * 1024
# Per tar entry: a header block, a pax or long-name header for paths up to 1024 bytes, and the data padding.
_TAR_ENTRY_OVERHEAD = 4 * 1024
# The end-of-archive blocks plus the padding to a whole 10 KiB record that tar writers add.
_TAR_TRAILER_ALLOWANCE = 32 * 1024
_MAX_NAME_BYTES = 255
_MAX_PATH_BYTES = 1024
_ZIP_ENCRYPTED_FLAG = 0x1
_ZIP_UTF8_FLAG = 0x800
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip wrapper: zlib checks the header, the CRC-32 and the length
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
# Control characters, invisible formatting (bidi overrides, zero-width spaces) and line/paragraph separators:
# none belongs in a file name, and they are how a listing is made to lie about what it shows.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_SUFFIXES: tuple[tuple[str, ArchiveKind], ...] = (
    (".tar.gz", "tar.gz"),
    (".tgz", "tar.gz"),
    (".tar", "tar"),
    (".zip", "zip"),
)
_KIND_NAMES: dict[ArchiveKind, str] = {
    "zip": "zip archive",
    "tar": "tar archive",
    "tar.gz": "gzipped tar archive",
}
# Everything the standard library raises for a malformed archive. ArchiveError is a ValueError, so every handler
# that uses this tuple re-raises ArchiveError first.
_FORMAT_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    OSError,
    struct.error,
    ValueError,
    NotImplementedError,
)


class ArchiveError(ValueError):
    """An upload was refused. ``str(error)`` is plain language for the student; ``code`` is for programs."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code

    def __reduce__(self) -> tuple[type[ArchiveError], tuple[ErrorCode, str]]:
        return type(self), (self.code, str(self))


@dataclass(frozen=True)
class UploadPolicy:
    """What one assignment accepts.

    ``allowed`` holds fnmatch patterns matched one path component at a time, so ``*`` never crosses a ``/``:
    ``"*.py"`` accepts ``warmup.py`` but not ``hw/warmup.py``; ``"data/*.json"`` accepts ``data/train.json``.
    """

    allowed: tuple[str, ...]
    max_files: int = 32
    max_total_bytes: int = 2 * 2**20
    max_file_bytes: int = 1 * 2**20
    max_upload_bytes: int = 4 * 2**20
    max_ratio: float = 200.0

    def __post_init__(self) -> None:
        if isinstance(self.allowed, str) or not self.allowed:
            raise ValueError("allowed must be a non-empty tuple of patterns, e.g. ('warmup.py',)")
        if not all(isinstance(pattern, str) and pattern for pattern in self.allowed):
            raise ValueError("every allowed pattern must be a non-empty string")
        limits = (self.max_files, self.max_total_bytes, self.max_file_bytes, self.max_upload_bytes)
        if min(limits) < 1:
            raise ValueError("file count and size limits must be positive")
        if not self.max_ratio > 1:
            raise ValueError("max_ratio must be greater than 1")


# How the stored blob is named in messages about it.
_STORED_NAME = "submission.tar.gz"
# A stored blob unpacked without the assignment's policy is held to these ceilings: generous, but bounded.
_STORED_BLOB_CEILING = UploadPolicy(
    allowed=("*",),
    max_files=4096,
    max_total_bytes=256 * 2**20,
    max_file_bytes=256 * 2**20,
    max_upload_bytes=256 * 2**20,
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def collect_upload(parts: Sequence[tuple[str, bytes]], policy: UploadPolicy) -> dict[str, bytes]:
    """Validate the files of one multipart upload and return ``{relative POSIX path: content}``, sorted.

    ``parts`` are ``(client filename, content)``. A single part named like an archive whose bytes are that kind
    of archive is unpacked (without expanding archives inside it); anything else is a set of plain files.
    Raises ``ArchiveError`` for every refusal; nothing is written anywhere either way.
    """
    received = sum(len(content) for _, content in parts)
    if received > policy.max_upload_bytes:
        raise ArchiveError(
            "too_large", f"The upload is {_size(received)}; the limit is {_size(policy.max_upload_bytes)}."
        )
    if received == 0:
        raise ArchiveError("empty", "The upload is empty: no file with any content was received.")
    kind = _archive_kind(parts[0][0]) if len(parts) == 1 else None
    if kind is None:
        return _collect_plain(parts, policy)
    name, data = parts[0]
    if not _has_magic(kind, data):
        raise ArchiveError(
            "corrupt", f"{_show(name)} is named like a {_KIND_NAMES[kind]}, but its contents are not one."
        )
    intake = _Intake(
        policy, source=name, drop_junk=True, compressed_size=len(data) if kind == "zip" else None
    )
    _read_archive(kind, data, name, intake, check_ratio=True)
    return _fit_allowed(intake.finish(), policy.allowed, source=name, strip_wrapper=True)


def pack(files: Mapping[str, bytes]) -> bytes:
    """The canonical .tar.gz of ``files``: sorted, regular files only, mode 0644, owner 0, mtime 0.

    The same files always give the same bytes (with the same zlib), so the sha256 of the result deduplicates
    identical submissions. Names must already be canonical, as ``collect_upload`` returns them.
    """
    names = sorted(files)
    _check_canonical_names(names)
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar,
    ):
        for name in names:
            content = files[name]
            info = tarfile.TarInfo(name)
            info.type = tarfile.REGTYPE
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def unpack(blob: bytes, dest: Path, policy: UploadPolicy | None = None) -> list[str]:
    """Check a stored blob again and write its files under ``dest``; return their names, sorted.

    The blob came from our own database, but a database can be tampered with, so it gets the same checks as an
    upload (except the compression-ratio heuristic, which the size limits make unnecessary here). With a
    ``policy`` its limits and allowed names apply; without one, only the structural checks and generous fixed
    ceilings. All checks finish before anything is written. ``dest`` must be an existing directory; files are
    created with ``O_EXCL | O_NOFOLLOW`` (mode 0644) under directories opened with ``O_NOFOLLOW`` (mode 0755),
    so a link planted in ``dest`` raises ``OSError`` instead of redirecting a write.
    """
    limits = policy or _STORED_BLOB_CEILING
    if not blob.startswith(_GZIP_MAGIC):
        raise _corrupt(_STORED_NAME, "it is not gzip data")
    intake = _Intake(limits, source=_STORED_NAME, drop_junk=False, compressed_size=None)
    _read_archive("tar.gz", blob, _STORED_NAME, intake, check_ratio=False)
    files = intake.finish()
    if policy is not None:
        files = _fit_allowed(files, policy.allowed, source=None, strip_wrapper=False)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name, content in files.items():
            _write_file(root_fd, name, content)
    finally:
        os.close(root_fd)
    return list(files)


class _Intake:
    """The files of one upload as they are read, with the policy's limits enforced on every chunk."""

    def __init__(
        self, limits: UploadPolicy, *, source: str | None, drop_junk: bool, compressed_size: int | None
    ) -> None:
        self.limits = limits
        self.source = source
        self._drop_junk = drop_junk
        # When set, the uncompressed total is compared with it on every chunk (zip: the whole upload).
        self._compressed_size = compressed_size
        self._files: dict[str, bytes] = {}
        self._claimed: dict[str, str] = {}
        self._total = 0

    def admit(self, name: str) -> str | None:
        """The clean path for a member about to be read, or None for OS junk that is skipped."""
        path = _clean_path(name, self.source)
        if self._drop_junk and _is_os_junk(path):
            return None
        key = _collision_key(path)
        earlier = self._claimed.get(key)
        if earlier is not None:
            if earlier == path:
                message = f"{_where(path, self.source)} appears more than once."
            else:
                message = (
                    f"{_where(earlier, self.source)} and {_show(path)} would be the same file: their names differ"
                    " only in letter case or Unicode form."
                )
            raise ArchiveError("duplicate", message)
        if len(self._claimed) >= self.limits.max_files:
            raise ArchiveError(
                "too_many_files",
                f"{_capitalised(self._container())} has more than {self.limits.max_files} files; "
                f"at most {self.limits.max_files} are allowed.",
            )
        self._claimed[key] = path
        return path

    def check_declared_size(self, path: str, size: int) -> None:
        """Refuse early on a size the archive declares; acceptance still depends on the bytes counted."""
        if size < 0:
            raise ArchiveError(
                "corrupt", f"{_where(path, self.source)} has an impossible size in its header."
            )
        self._check_sizes(path, size, self._total + size)

    def add(self, path: str, content: bytes) -> None:
        self._total += len(content)
        self._check_sizes(path, len(content), self._total)
        self._files[path] = content

    def read(self, path: str, stream: IO[bytes]) -> None:
        chunks: list[bytes] = []
        size = 0
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            self._total += len(chunk)
            self._check_ratio(path)
            self._check_sizes(path, size, self._total)
            chunks.append(chunk)
        self._files[path] = b"".join(chunks)

    def finish(self) -> dict[str, bytes]:
        if not self._files:
            raise ArchiveError("empty", f"{_capitalised(self._container())} contains no files.")
        _check_folder_clashes(self._files, self.source)
        return dict(sorted(self._files.items()))

    def _container(self) -> str:
        return _show(self.source) if self.source else "the upload"

    def _check_sizes(self, path: str, file_size: int, total: int) -> None:
        if file_size > self.limits.max_file_bytes:
            raise ArchiveError(
                "file_too_large",
                f"{_where(path, self.source)} is larger than {_size(self.limits.max_file_bytes)}, "
                "the limit for a single file.",
            )
        if total > self.limits.max_total_bytes:
            raise ArchiveError(
                "too_large",
                f"The files in {self._container()} add up to more than {_size(self.limits.max_total_bytes)}, "
                "the limit for a whole submission.",
            )

    def _check_ratio(self, path: str) -> None:
        if self._compressed_size is None:
            return
        if _exceeds_ratio(self._total, self._compressed_size, self.limits.max_ratio):
            raise _bomb(self.source, self.limits.max_ratio, near=path)


class _GuardedStream(io.RawIOBase):
    """The decompressed bytes of a tar or tar.gz, read on demand and never more than the budget allows.

    For gzip it feeds zlib itself, so it knows exactly how much compressed input each output byte cost: that is
    what the bomb check compares, and what a library's read-ahead buffer would hide.
    """

    def __init__(self, data: bytes, *, gzipped: bool, cap: int, max_ratio: float | None, source: str) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._consumed = 0
        self._gzipped = gzipped
        self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        self._cap = cap
        self._max_ratio = max_ratio
        self.source = source
        self._produced = 0
        # Offset just past the last non-zero output byte: a tar must hold nothing but zeros after its end marker.
        self.data_end = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self._next_chunk(min(len(view), _CHUNK))
        view[: len(chunk)] = chunk
        return len(chunk)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def _next_chunk(self, want: int) -> bytes:
        if want <= 0:
            return b""
        if not self._gzipped:
            chunk = bytes(self._data[self._consumed : self._consumed + want])
            self._consumed += len(chunk)
        else:
            chunk = self._inflate(want)
        if not chunk:
            return chunk
        nonzero = len(chunk.rstrip(b"\0"))
        if nonzero:
            self.data_end = self._produced + nonzero
        self._produced += len(chunk)
        if self._max_ratio is not None and _exceeds_ratio(self._produced, self._consumed, self._max_ratio):
            raise _bomb(self.source, self._max_ratio, near=None)
        if self._produced > self._cap:
            raise ArchiveError(
                "too_large", f"{_show(self.source)} unpacks to more data than a submission may contain."
            )
        return chunk

    def _inflate(self, want: int) -> bytes:
        while True:
            if self._inflater.eof:
                if self._consumed == len(self._data):
                    return b""
                # gzip allows several members back to back; anything else after the end is damage.
                if bytes(self._data[self._consumed : self._consumed + 2]) != _GZIP_MAGIC:
                    raise _corrupt(self.source, "it has extra data after the end of the compressed stream")
                self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
            if self._consumed == len(self._data):
                raise _corrupt(self.source, "it ends in the middle of the compressed data")
            feed = self._data[self._consumed : self._consumed + _CHUNK]
            chunk = self._inflater.decompress(feed, want)
            # What zlib left over sits in unused_data once the member has ended (where unconsumed_tail may still
            # hold a stale copy of it), and in unconsumed_tail while the output limit holds it back.
            leftover = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
            used = len(feed) - len(leftover)
            self._consumed += used
            if chunk:
                return chunk
            if not used and not self._inflater.eof:
                raise _corrupt(self.source, "its compressed data makes no progress")


def _collect_plain(parts: Sequence[tuple[str, bytes]], policy: UploadPolicy) -> dict[str, bytes]:
    intake = _Intake(policy, source=None, drop_junk=True, compressed_size=None)
    for name, content in parts:
        path = intake.admit(name)
        if path is not None:
            intake.add(path, content)
    return _fit_allowed(intake.finish(), policy.allowed, source=None, strip_wrapper=False)


def _read_archive(kind: ArchiveKind, data: bytes, source: str, intake: _Intake, *, check_ratio: bool) -> None:
    try:
        if kind == "zip":
            _read_zip(data, source, intake, check_ratio=check_ratio)
        else:
            _read_tar(data, source, intake, gzipped=kind == "tar.gz", check_ratio=check_ratio)
    except ArchiveError:
        raise
    except _FORMAT_ERRORS as exc:
        raise _corrupt(source, f"it is not a valid {_KIND_NAMES[kind]}") from exc


def _read_zip(data: bytes, source: str, intake: _Intake, *, check_ratio: bool) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except UnicodeDecodeError as exc:  # a name flagged as UTF-8 that is not
        raise _bad_encoding(exc.object.decode("utf-8", "replace"), source) from exc
    limits = intake.limits
    with archive:
        members = archive.infolist()
        if len(members) > _max_entries(limits):
            raise ArchiveError(
                "too_many_files",
                f"{_show(source)} has {len(members)} entries; at most {limits.max_files} files are allowed.",
            )
        for info in members:
            name = _zip_member_name(info, source)
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type == stat.S_IFLNK:
                raise _link(name, source)
            if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _special(name, source)
            if info.is_dir() or file_type == stat.S_IFDIR:
                continue
            path = intake.admit(name)
            if path is None:
                continue
            if info.flag_bits & _ZIP_ENCRYPTED_FLAG:
                raise _corrupt(source, f"{_show(path)} is password-protected")
            # Only these decompress in bounded steps; zipfile inflates bzip2 and lzma data in one unbounded call.
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _corrupt(source, f"{_show(path)} uses a compression method other than the standard one")
            if check_ratio and _exceeds_ratio(info.file_size, info.compress_size, limits.max_ratio):
                raise _bomb(source, limits.max_ratio, near=path)
            intake.check_declared_size(path, info.file_size)
            with archive.open(info) as member:
                intake.read(path, member)


def _read_tar(data: bytes, source: str, intake: _Intake, *, gzipped: bool, check_ratio: bool) -> None:
    limits = intake.limits
    stream = _GuardedStream(
        data,
        gzipped=gzipped,
        cap=limits.max_total_bytes + _max_entries(limits) * _TAR_ENTRY_OVERHEAD + _TAR_TRAILER_ALLOWANCE,
        max_ratio=limits.max_ratio if check_ratio and gzipped else None,
        source=source,
    )
    entries = 0
    with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as archive:
        for member in archive:
            entries += 1
            if entries > _max_entries(limits):
                raise ArchiveError(
                    "too_many_files",
                    f"{_show(source)} has more than {_max_entries(limits)} entries; "
                    f"at most {limits.max_files} files are allowed.",
                )
            if member.issym() or member.islnk():
                raise _link(member.name, source)
            if member.isdir():
                continue
            if member.issparse() or not member.isreg():
                raise _special(member.name, source)
            path = intake.admit(member.name)
            if path is None:
                continue
            intake.check_declared_size(path, member.size)
            content = archive.extractfile(member)
            assert content is not None  # extractfile returns None only for non-regular members
            intake.read(path, content)
        end_of_archive = archive.offset
        stream.drain()
    if stream.data_end > end_of_archive:
        raise _corrupt(source, "it has data after the end of the archive")


def _zip_member_name(info: zipfile.ZipInfo, source: str) -> str:
    # orig_filename, not filename: zipfile cuts names at the first NUL, which would hide it from the checks.
    if info.flag_bits & _ZIP_UTF8_FLAG:
        return info.orig_filename
    # Without the UTF-8 flag zipfile decodes as cp437, which maps every byte; undo that to see the real bytes.
    # Many tools write UTF-8 without setting the flag, so UTF-8 is accepted; anything else is refused.
    raw = info.orig_filename.encode("cp437")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_encoding(raw.decode("utf-8", "replace"), source) from None


def _clean_path(name: str, source: str | None) -> str:
    """The NFC form of a member name, or ArchiveError if it could escape or confuse the target directory."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad_encoding(
            "".join("\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in name), source
        ) from None
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise _unsafe(name, source, "it is empty")
    for char in name:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise _unsafe(name, source, f"it contains a control or invisible character (U+{ord(char):04X})")
    if "\\" in name:
        raise _unsafe(name, source, "it contains a backslash; archives must separate folders with '/'")
    if _DRIVE_LETTER.match(name):
        raise _unsafe(name, source, "it starts with a drive letter")
    if name.startswith("/"):
        raise _unsafe(name, source, "it is an absolute path")
    if len(name.encode("utf-8")) > _MAX_PATH_BYTES:
        raise _unsafe(name, source, f"the path is longer than {_MAX_PATH_BYTES} bytes")
    path = name
    while path.startswith("./"):  # `tar -C folder .` writes every name this way
        path = path[2:]
    components = path.split("/")
    if "" in components:
        raise _unsafe(name, source, "it has an empty folder name ('//' or a trailing '/')")
    if ".." in components:
        raise _unsafe(name, source, "it contains a '..' component")
    if "." in components:
        raise _unsafe(name, source, "it contains a '.' component")
    if any(len(component.encode("utf-8")) > _MAX_NAME_BYTES for component in components):
        raise _unsafe(name, source, f"a name in it is longer than {_MAX_NAME_BYTES} bytes")
    return path


def _check_canonical_names(names: Sequence[str]) -> None:
    claimed: set[str] = set()
    for name in names:
        if _clean_path(name, None) != name:
            raise _unsafe(name, None, "it is not in canonical form")
        key = _collision_key(name)
        if key in claimed:
            raise ArchiveError(
                "duplicate", f"{_show(name)} collides with another name that differs only in case."
            )
        claimed.add(key)
    _check_folder_clashes(names, None)


def _check_folder_clashes(paths: Iterable[str], source: str | None) -> None:
    """Refuse a name that is a file in one place and a folder in another (``a.py`` and ``a.py/b.py``)."""
    files = {_collision_key(path): path for path in paths}
    for key, path in files.items():
        folders = key.split("/")[:-1]
        for depth in range(1, len(folders) + 1):
            clash = files.get("/".join(folders[:depth]))
            if clash is not None:
                raise ArchiveError(
                    "duplicate",
                    f"{_where(clash, source)} is a file, but {_show(path)} needs a folder of that name.",
                )


def _collision_key(path: str) -> str:
    return unicodedata.normalize("NFC", path.casefold())


def _is_os_junk(path: str) -> bool:
    components = path.split("/")
    return components[0] == "__MACOSX" or components[-1] == ".DS_Store"


def _fit_allowed(
    files: dict[str, bytes], allowed: tuple[str, ...], *, source: str | None, strip_wrapper: bool
) -> dict[str, bytes]:
    """Check every name against the allowed patterns, first unwrapping a lone top-level folder if that helps.

    Zipping a folder (``hw/warmup.py``) is the most common way to build an archive, so a single folder that wraps
    everything is dropped when that, and only that, makes every name match.
    """
    misses = [path for path in files if not _is_allowed(path, allowed)]
    if not misses:
        return files
    wrapper = _single_top_folder(files) if strip_wrapper else None
    if wrapper is not None:
        unwrapped = {path[len(wrapper) + 1 :]: content for path, content in files.items()}
        unwrapped_misses = [path for path in unwrapped if not _is_allowed(path, allowed)]
        if not unwrapped_misses:
            return unwrapped
        if len(unwrapped_misses) < len(misses):
            misses = [f"{wrapper}/{path}" for path in unwrapped_misses]
    others = f" (and {len(misses) - 1} more)" if len(misses) > 1 else ""
    hint = ""
    if source is None and len(files) > 1 and _archive_kind(misses[0]) is not None:
        hint = " An archive must be uploaded on its own, not together with other files."
    raise ArchiveError(
        "name_not_allowed",
        f"{_where(misses[0], source)}{others} is not a file this assignment accepts; "
        f"the accepted names are: {', '.join(allowed)}.{hint}",
    )


def _is_allowed(path: str, allowed: tuple[str, ...]) -> bool:
    components = path.split("/")
    for pattern in allowed:
        pattern_components = pattern.split("/")
        if len(pattern_components) == len(components) and all(
            fnmatch.fnmatchcase(component, part)
            for component, part in zip(components, pattern_components, strict=True)
        ):
            return True
    return False


def _single_top_folder(files: Mapping[str, bytes]) -> str | None:
    tops = {path.split("/", 1)[0] for path in files}
    if len(tops) == 1 and all("/" in path for path in files):
        return tops.pop()
    return None


def _write_file(root_fd: int, name: str, content: bytes) -> None:
    *folders, filename = name.split("/")
    opened: list[int] = []
    dir_fd = root_fd
    try:
        for folder in folders:
            try:
                os.mkdir(folder, 0o755, dir_fd=dir_fd)
                created = True
            except FileExistsError:
                created = False
            dir_fd = os.open(
                folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            opened.append(dir_fd)
            if created:
                os.fchmod(dir_fd, 0o755)  # the umask may have narrowed it; the sandbox user must read it
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        file_fd = os.open(filename, flags, 0o644, dir_fd=dir_fd)
        try:
            os.fchmod(file_fd, 0o644)
            remaining = memoryview(content)
            while remaining:
                remaining = remaining[os.write(file_fd, remaining) :]
        finally:
            os.close(file_fd)
    finally:
        for fd in opened:
            os.close(fd)


def _archive_kind(filename: str) -> ArchiveKind | None:
    lowered = filename.lower()
    for suffix, kind in _SUFFIXES:
        if lowered.endswith(suffix):
            return kind
    return None


def _has_magic(kind: ArchiveKind, data: bytes) -> bool:
    if kind == "zip":
        return data.startswith((b"PK\x03\x04", b"PK\x05\x06"))  # a local file header, or an empty archive
    if kind == "tar.gz":
        return data.startswith(_GZIP_MAGIC)
    # ustar (POSIX, pax and GNU tar all write it), or an archive that is nothing but its zero end marker.
    return data[257:262] == b"ustar" or (len(data) >= 512 and not any(data[:512]))


def _max_entries(limits: UploadPolicy) -> int:
    # Directories and OS junk are entries too (a Finder zip roughly doubles its entries), so allow for them.
    return 4 * limits.max_files + 64


def _exceeds_ratio(uncompressed: int, compressed: int, max_ratio: float) -> bool:
    return uncompressed > _RATIO_FLOOR and uncompressed > max_ratio * max(compressed, 1)


def _show(name: str) -> str:
    shown = name if len(name) <= 120 else name[:100] + "..."
    return repr(shown)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _where(name: str, source: str | None) -> str:
    return f"{_show(name)} in {_show(source)}" if source else _show(name)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} byte" if count == 1 else f"{count} bytes"


def _unsafe(name: str, source: str | None, reason: str) -> ArchiveError:
    return ArchiveError("unsafe_path", f"{_where(name, source)} is not a safe file name: {reason}.")


def _bad_encoding(shown: str, source: str | None) -> ArchiveError:
    """``shown`` is the name with its undecodable bytes replaced by U+FFFD."""
    where = f" in {_show(source)}" if source else ""
    return ArchiveError(
        "bad_name_encoding",
        f"The file name {_show(shown)}{where} is not valid UTF-8. Rename it using plain letters, "
        "then create the archive again.",
    )


def _link(name: str, source: str) -> ArchiveError:
    return ArchiveError(
        "link",
        f"{_where(name, source)} is a link, not a file. Upload the files themselves, not links to them.",
    )


def _special(name: str, source: str) -> ArchiveError:
    return ArchiveError(
        "special_file",
        f"{_where(name, source)} is a device, pipe or other special entry, not a regular file.",
    )


def _bomb(source: str | None, max_ratio: float, *, near: str | None) -> ArchiveError:
    where = f" (at {_show(near)})" if near else ""
    return ArchiveError(
        "bomb",
        f"{_show(source or 'the upload')} expands to more than {max_ratio:g} times its compressed size{where}, "
        "which is how decompression bombs look; it was not unpacked.",
    )


def _corrupt(source: str, reason: str) -> ArchiveError:
    return ArchiveError("corrupt", f"{_show(source)} is damaged or not what its name says: {reason}.")
