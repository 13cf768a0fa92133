"""Upload validation and canonical storage: every hostile archive is built here, in memory, from the stdlib."""

from __future__ import annotations

import gzip
import io
import pickle
import random
import stat
import tarfile
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from server.submissions.archive import ArchiveError, UploadPolicy, collect_upload, pack, sha256_hex, unpack

POLICY = UploadPolicy(allowed=("warmup.py", "utils.py", "data/*.json"))
CODE = b"def f(x):\n    return x + 1\n"


def make_zip(
    entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


def member(
    name: str, content: bytes = CODE, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, content


def make_tar(
    members: list[tuple[tarfile.TarInfo, bytes]], *, gzipped: bool = True, fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if gzipped else data


def rejection(parts: list[tuple[str, bytes]], policy: UploadPolicy = POLICY) -> ArchiveError:
    with pytest.raises(ArchiveError) as caught:
        collect_upload(parts, policy)
    message = str(caught.value)
    assert "Traceback" not in message
    assert "Error" not in message  # no exception class names leak to the student
    return caught.value


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# --- accepted uploads -----------------------------------------------------------------------------------------


def test_plain_files_are_accepted_as_sent() -> None:
    files = collect_upload([("warmup.py", CODE), ("utils.py", b"X = 1\n")], POLICY)
    assert files == {"utils.py": b"X = 1\n", "warmup.py": CODE}


def test_plain_file_path_matching_an_allowed_folder_pattern_is_kept() -> None:
    assert collect_upload([("data/train.json", b"{}")], POLICY) == {"data/train.json": b"{}"}


def test_empty_file_among_others_is_kept() -> None:
    files = collect_upload([("warmup.py", CODE), ("utils.py", b"")], POLICY)
    assert files["utils.py"] == b""


@pytest.mark.parametrize(
    ("filename", "build"),
    [
        ("hw.zip", lambda entries: make_zip(entries)),
        ("HW.ZIP", lambda entries: make_zip(entries, zipfile.ZIP_STORED)),
        ("hw.tar.gz", lambda entries: make_tar([member(n, c) for n, c in entries])),
        ("hw.tgz", lambda entries: make_tar([member(n, c) for n, c in entries], fmt=tarfile.GNU_FORMAT)),
        ("hw.tar", lambda entries: make_tar([member(n, c) for n, c in entries], gzipped=False)),
    ],
)
def test_archive_is_unpacked(filename: str, build: Callable[[list[tuple[str, bytes]]], bytes]) -> None:
    entries = [("warmup.py", CODE), ("data/train.json", b'{"a": 1}')]
    assert collect_upload([(filename, build(entries))], POLICY) == dict(sorted(entries))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_single_wrapping_folder_is_stripped(kind: str) -> None:
    entries = [("hw/warmup.py", CODE), ("hw/data/train.json", b"{}")]
    if kind == "zip":
        data = make_zip([("hw/", b""), *entries])
    else:
        data = make_tar([member(n, c) for n, c in entries])
    assert collect_upload([(f"hw.{kind}", data)], POLICY) == {"data/train.json": b"{}", "warmup.py": CODE}


def test_gzip_stream_of_several_members_is_read_whole() -> None:
    tar = make_tar([member("warmup.py"), member("utils.py", b"X = 1\n")], gzipped=False)
    data = gzip.compress(tar[:700], mtime=0) + gzip.compress(tar[700:], mtime=0)
    assert collect_upload([("hw.tgz", data)], POLICY) == {"utils.py": b"X = 1\n", "warmup.py": CODE}


def test_wrapping_folder_is_kept_when_names_already_match() -> None:
    policy = UploadPolicy(allowed=("warmup.py", "utils/*.py"))
    data = make_zip([("utils/a.py", CODE), ("utils/b.py", CODE)])
    assert sorted(collect_upload([("hw.zip", data)], policy)) == ["utils/a.py", "utils/b.py"]


def test_leading_dot_slash_from_tar_is_dropped() -> None:
    data = make_tar([member("./", b"", tarfile.DIRTYPE), member("./warmup.py")])
    assert collect_upload([("hw.tgz", data)], POLICY) == {"warmup.py": CODE}


def test_directories_in_archives_are_skipped() -> None:
    data = make_tar([member("data", b"", tarfile.DIRTYPE), member("data/a.json", b"{}")])
    assert collect_upload([("hw.tar.gz", data)], POLICY) == {"data/a.json": b"{}"}


def test_macos_junk_is_dropped_silently() -> None:
    data = make_zip(
        [
            ("hw/warmup.py", CODE),
            ("hw/.DS_Store", b"\x00\x00\x00\x01Bud1"),
            ("__MACOSX/hw/._warmup.py", b"\x00\x05\x16\x07"),
        ]
    )
    assert collect_upload([("hw.zip", data)], POLICY) == {"warmup.py": CODE}


def test_nested_archive_is_stored_as_a_file() -> None:
    inner = make_zip([("warmup.py", CODE)])
    policy = UploadPolicy(allowed=("weights.zip",))
    assert collect_upload([("bundle.zip", make_zip([("weights.zip", inner)]))], policy) == {
        "weights.zip": inner
    }


def test_single_part_named_like_code_is_not_unpacked_even_with_archive_bytes() -> None:
    data = make_zip([("warmup.py", CODE)])
    assert collect_upload([("warmup.py", data)], POLICY) == {"warmup.py": data}


def test_names_are_normalised_to_nfc() -> None:
    decomposed = "cafe\u0301.py"
    files = collect_upload([(decomposed, CODE)], UploadPolicy(allowed=("*.py",)))
    assert list(files) == ["caf\u00e9.py"]


def test_zip_utf8_name_without_the_utf8_flag_is_accepted() -> None:
    data = make_zip([("cafXY.py", CODE)]).replace(b"cafXY.py", "caf\u00e9.py".encode())
    assert list(collect_upload([("hw.zip", data)], UploadPolicy(allowed=("*.py",)))) == ["caf\u00e9.py"]


# --- empty, size and count limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [("warmup.py", b""), ("utils.py", b"")],
        [("hw.zip", make_zip([("hw/", b"")]))],
        [("hw.tar.gz", make_tar([member(".DS_Store", b"junk")]))],
    ],
    ids=["no-parts", "zero-length-parts", "zip-with-only-a-folder", "tar-with-only-os-junk"],
)
def test_empty_upload_is_refused(parts: list[tuple[str, bytes]]) -> None:
    assert rejection(parts).code == "empty"


def test_raw_upload_over_the_limit_is_refused() -> None:
    policy = UploadPolicy(allowed=("warmup.py",), max_upload_bytes=1024)
    error = rejection([("warmup.py", b"#" * 1025)], policy)
    assert error.code == "too_large"
    assert "1 KiB" in str(error)


def test_plain_files_over_the_total_limit_are_refused() -> None:
    policy = UploadPolicy(allowed=("*.py",), max_total_bytes=100, max_file_bytes=80)
    assert rejection([("a.py", b"#" * 60), ("b.py", b"#" * 60)], policy).code == "too_large"


def test_archive_members_over_the_total_limit_are_refused() -> None:
    policy = UploadPolicy(allowed=("*.bin",), max_total_bytes=64 * 1024, max_file_bytes=48 * 1024)
    data = make_zip([("a.bin", random_bytes(40 * 1024, 1)), ("b.bin", random_bytes(40 * 1024, 2))])
    assert rejection([("hw.zip", data)], policy).code == "too_large"


def test_too_many_plain_files_are_refused() -> None:
    policy = UploadPolicy(allowed=("*.py",), max_files=2)
    parts = [(f"f{i}.py", CODE) for i in range(3)]
    assert rejection(parts, policy).code == "too_many_files"


def test_too_many_archive_members_are_refused() -> None:
    policy = UploadPolicy(allowed=("*.py",), max_files=2)
    data = make_zip([(f"f{i}.py", CODE) for i in range(3)])
    error = rejection([("hw.zip", data)], policy)
    assert error.code == "too_many_files"
    assert "'hw.zip'" in str(error)


def test_too_many_tar_entries_are_refused_even_if_they_are_folders() -> None:
    policy = UploadPolicy(allowed=("*.py",), max_files=2)
    data = make_tar([member(f"d{i}", b"", tarfile.DIRTYPE) for i in range(100)])
    assert rejection([("hw.tgz", data)], policy).code == "too_many_files"


def test_plain_file_over_the_file_limit_is_refused() -> None:
    policy = UploadPolicy(allowed=("warmup.py",), max_file_bytes=100)
    error = rejection([("warmup.py", b"#" * 101)], policy)
    assert error.code == "file_too_large"
    assert "'warmup.py'" in str(error)


def test_zip_member_over_the_file_limit_is_refused() -> None:
    policy = UploadPolicy(allowed=("big.bin",), max_file_bytes=4096)
    data = make_zip([("big.bin", random_bytes(5000))])
    assert rejection([("hw.zip", data)], policy).code == "file_too_large"


def test_tar_member_claiming_a_huge_size_is_refused_before_reading() -> None:
    info, _ = member("big.bin", b"")
    info.size = 10 * 2**30  # the header claims 10 GiB; the archive holds none of it
    header = info.tobuf(tarfile.PAX_FORMAT)
    data = gzip.compress(header + bytes(1024))
    error = rejection([("hw.tar.gz", data)], UploadPolicy(allowed=("big.bin",)))
    assert error.code == "file_too_large"


# --- names ----------------------------------------------------------------------------------------------------


def test_plain_file_not_allowed_names_the_file_and_the_patterns() -> None:
    error = rejection([("warmup.py", CODE), ("notes.txt", b"hi")])
    assert error.code == "name_not_allowed"
    assert "'notes.txt'" in str(error)
    assert "warmup.py, utils.py, data/*.json" in str(error)


def test_plain_file_with_a_folder_not_in_the_patterns_is_refused() -> None:
    assert rejection([("src/warmup.py", CODE)]).code == "name_not_allowed"


def test_archive_member_not_allowed_is_refused() -> None:
    error = rejection([("hw.zip", make_zip([("warmup.py", CODE), ("solution_copy.py", CODE)]))])
    assert error.code == "name_not_allowed"
    assert "'solution_copy.py' in 'hw.zip'" in str(error)


def test_wrapping_folder_is_not_stripped_when_that_does_not_make_every_name_match() -> None:
    data = make_zip([("hw/warmup.py", CODE), ("hw/notes.txt", b"hi")])
    error = rejection([("hw.zip", data)])
    assert error.code == "name_not_allowed"
    assert "'hw/notes.txt'" in str(error)


def test_star_does_not_cross_folders() -> None:
    policy = UploadPolicy(allowed=("*.py",))
    assert rejection([("pkg/warmup.py", CODE)], policy).code == "name_not_allowed"


def test_archive_sent_with_other_files_is_a_plain_file_and_says_so() -> None:
    error = rejection([("warmup.py", CODE), ("hw.zip", make_zip([("utils.py", CODE)]))])
    assert error.code == "name_not_allowed"
    assert "on its own" in str(error)


UNSAFE_NAMES = [
    "/etc/passwd",
    "../warmup.py",
    "data/../../warmup.py",
    "data\\warmup.py",
    "C:warmup.py",
    "data//a.json",
    "data/./a.json",
    "warm\nup.py",
    "\u202eyp.pumraw",
    "a" * 256 + ".py",
    "/".join(["d" * 200] * 6) + "/warmup.py",
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_plain_file_name_is_refused(name: str) -> None:
    assert rejection([(name, CODE)]).code == "unsafe_path"


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_zip_member_name_is_refused(name: str) -> None:
    error = rejection([("hw.zip", make_zip([("warmup.py", CODE), (name, CODE)]))])
    assert error.code == "unsafe_path"
    assert "'hw.zip'" in str(error)


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_tar_member_name_is_refused(name: str) -> None:
    assert rejection([("hw.tar.gz", make_tar([member(name)]))]).code == "unsafe_path"


def test_zip_member_name_with_a_nul_byte_is_refused() -> None:
    # zipfile cuts names at NUL when reading; the check must see the whole name, so plant it in the raw bytes.
    data = make_zip([("warmup.pyXsh", CODE)]).replace(b"warmup.pyXsh", b"warmup.py\x00sh")
    assert rejection([("hw.zip", data)]).code == "unsafe_path"


def test_zip_name_in_a_legacy_encoding_is_refused() -> None:
    data = make_zip([("cafX.py", CODE)]).replace(b"cafX.py", b"caf\xe9.py")  # latin-1, no UTF-8 flag
    error = rejection([("hw.zip", data)])
    assert error.code == "bad_name_encoding"
    assert "'caf\ufffd.py' in 'hw.zip'" in str(error)


def test_zip_name_flagged_utf8_but_invalid_is_refused() -> None:
    valid = "caf\u00e9.py".encode()
    data = make_zip([("caf\u00e9.py", CODE)]).replace(valid, b"caf\xff\xfe.py")
    assert rejection([("hw.zip", data)]).code == "bad_name_encoding"


def test_tar_name_that_is_not_utf8_is_refused() -> None:
    data = make_tar([member("caf\udce9.py")], fmt=tarfile.GNU_FORMAT)  # the raw byte 0xE9
    assert rejection([("hw.tar.gz", data)]).code == "bad_name_encoding"


@pytest.mark.parametrize(
    "names",
    [
        ["warmup.py", "warmup.py"],
        ["Warmup.py", "warmup.py"],
        ["caf\u00e9.py", "cafe\u0301.py"],
    ],
    ids=["same-name", "case-only", "nfc-vs-nfd"],
)
def test_duplicate_plain_names_are_refused(names: list[str]) -> None:
    policy = UploadPolicy(allowed=("*.py",))
    assert rejection([(name, CODE) for name in names], policy).code == "duplicate"


def test_duplicate_zip_members_are_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate it is told to write
        data = make_zip([("warmup.py", CODE), ("warmup.py", b"evil = True\n")])
    assert rejection([("hw.zip", data)]).code == "duplicate"


def test_name_used_as_both_file_and_folder_is_refused() -> None:
    policy = UploadPolicy(allowed=("*", "*/*"))
    data = make_tar([member("data"), member("data/a.json")])
    assert rejection([("hw.tgz", data)], policy).code == "duplicate"


# --- links and special files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_tar_link_is_refused(kind: bytes) -> None:
    data = make_tar([member("warmup.py", b"", kind, link="/etc/passwd")])
    error = rejection([("hw.tar.gz", data)])
    assert error.code == "link"
    assert "'warmup.py'" in str(error)


def test_zip_symlink_entry_is_refused() -> None:
    info = zipfile.ZipInfo("warmup.py")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert rejection([("hw.zip", make_zip([(info, b"/etc/passwd")]))]).code == "link"


@pytest.mark.parametrize(
    "kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE], ids=["fifo", "chr", "blk"]
)
def test_tar_special_file_is_refused(kind: bytes) -> None:
    assert (
        rejection([("hw.tar", make_tar([member("warmup.py", b"", kind)], gzipped=False))]).code
        == "special_file"
    )


def test_zip_entry_with_fifo_mode_is_refused() -> None:
    info = zipfile.ZipInfo("warmup.py")
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    assert rejection([("hw.zip", make_zip([(info, b"")]))]).code == "special_file"


# --- bombs ----------------------------------------------------------------------------------------------------


def test_zip_bomb_is_refused_from_its_declared_ratio() -> None:
    data = make_zip([("warmup.py", bytes(8 * 2**20))])  # 8 MiB of zeros deflate to about 8 KiB
    assert len(data) < 16 * 1024
    error = rejection([("hw.zip", data)])
    assert error.code == "bomb"
    assert "'hw.zip'" in str(error)


def test_zip_of_many_highly_compressible_members_is_refused_by_the_running_ratio() -> None:
    # Each member alone stays under the ratio floor; together they expand far beyond the upload's size.
    policy = UploadPolicy(allowed=("*.bin",), max_file_bytes=200 * 1024, max_total_bytes=4 * 2**20)
    data = make_zip([(f"m{i}.bin", bytes(200 * 1024)) for i in range(16)])
    assert rejection([("hw.zip", data)], policy).code == "bomb"


def gzip_bomb(expanded_mib: int) -> bytes:
    # gzip allows members back to back, so a ~1 KiB member of 1 MiB of zeros repeated makes a stream that
    # claims `expanded_mib` MiB without anyone ever holding that much.
    return gzip.compress(bytes(2**20), mtime=0) * expanded_mib


def test_gzip_bomb_is_refused_without_expanding_it() -> None:
    data = gzip_bomb(2048)  # 2 GiB of zeros in about 2 MiB
    assert len(data) < POLICY.max_upload_bytes
    tracemalloc.start()
    try:
        error = rejection([("hw.tar.gz", data)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "bomb"
    assert peak < 8 * 2**20


def test_gzip_bomb_is_bounded_by_the_size_limits_even_without_the_ratio_check() -> None:
    policy = UploadPolicy(allowed=("warmup.py",), max_ratio=1e12)
    tracemalloc.start()
    try:
        error = rejection([("hw.tar.gz", gzip_bomb(2048))], policy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "too_large"
    assert peak < 8 * 2**20


# --- corrupt archives -----------------------------------------------------------------------------------------


def corrupt_cases() -> list[tuple[str, bytes]]:
    good_zip = make_zip([("warmup.py", CODE)], zipfile.ZIP_STORED)
    bad_crc = good_zip.replace(CODE, CODE.replace(b"+ 1", b"+ 2"))
    encrypted = bytearray(good_zip)
    encrypted[6] |= 0x1  # general purpose flag in the local header
    central = good_zip.index(b"PK\x01\x02")
    encrypted[central + 8] |= 0x1  # and in the central directory
    bzip2 = make_zip([("warmup.py", CODE)], zipfile.ZIP_BZIP2)
    lying_size = bytearray(make_zip([("warmup.py", bytes(64 * 1024))]))
    for offset in (22, lying_size.index(b"PK\x01\x02") + 24):  # uncompressed size: local, then central
        lying_size[offset : offset + 4] = (100).to_bytes(4, "little")
    good_tgz = make_tar([member("warmup.py")])
    trailing = gzip.compress(make_tar([member("warmup.py")], gzipped=False) + b"\x01" * 512)
    return [
        ("hw.zip", good_zip[: len(good_zip) // 2]),
        ("hw.zip", bad_crc),
        ("hw.zip", bytes(encrypted)),
        ("hw.zip", bzip2),
        ("hw.zip", bytes(lying_size)),
        ("hw.zip", b"this is not a zip archive"),
        ("hw.tar.gz", make_tar([member("warmup.py")], gzipped=False)),
        ("hw.tar.gz", good_tgz[:-10]),
        ("hw.tar.gz", gzip.compress(CODE * 100)),
        ("hw.tar.gz", good_tgz + b"garbage"),
        ("hw.tar.gz", trailing),
        ("hw.tar", b"x" * 1024),
    ]


@pytest.mark.parametrize(
    ("filename", "data"),
    corrupt_cases(),
    ids=[
        "truncated-zip",
        "bad-crc",
        "encrypted-zip",
        "bzip2-member",
        "zip-size-header-lies",
        "not-a-zip",
        "tar-named-tar-gz",
        "truncated-gzip",
        "gzip-but-not-tar",
        "garbage-after-gzip",
        "data-after-tar-end",
        "not-a-tar",
    ],
)
def test_corrupt_archive_is_refused(filename: str, data: bytes) -> None:
    error = rejection([(filename, data)])
    assert error.code == "corrupt"
    assert f"'{filename}'" in str(error)


# --- policy and errors ----------------------------------------------------------------------------------------


def test_policy_refuses_a_bare_string_of_patterns() -> None:
    with pytest.raises(ValueError, match="tuple"):
        UploadPolicy(allowed="warmup.py")  # type: ignore[arg-type]


def test_archive_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ArchiveError("empty", "The upload is empty.")))  # noqa: S301
    assert (error.code, str(error)) == ("empty", "The upload is empty.")


# --- canonical storage ----------------------------------------------------------------------------------------

FILES = {"warmup.py": CODE, "data/b.json": b"[]", "data/a.json": b"{}"}


def test_pack_is_deterministic() -> None:
    reordered = dict(reversed(list(FILES.items())))
    assert pack(FILES) == pack(reordered)
    assert sha256_hex(pack(FILES)) == sha256_hex(pack(dict(FILES)))


def test_pack_writes_sorted_regular_files_owned_by_nobody() -> None:
    with tarfile.open(fileobj=io.BytesIO(pack(FILES)), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["data/a.json", "data/b.json", "warmup.py"]
    assert {(m.type, m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (tarfile.REGTYPE, 0o644, 0, 0, 0, "", "")
    }


@pytest.mark.parametrize(
    "files",
    [{"../warmup.py": CODE}, {"A.py": CODE, "a.py": CODE}, {"./warmup.py": CODE}, {"a": CODE, "a/b": CODE}],
    ids=["traversal", "case-collision", "not-canonical", "file-and-folder"],
)
def test_pack_refuses_names_that_would_not_unpack(files: dict[str, bytes]) -> None:
    with pytest.raises(ArchiveError):
        pack(files)


def test_unpack_round_trips_pack(tmp_path: Path) -> None:
    assert unpack(pack(FILES), tmp_path, POLICY) == ["data/a.json", "data/b.json", "warmup.py"]
    for name, content in FILES.items():
        written = tmp_path / name
        assert written.read_bytes() == content
        assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o755


def test_unpack_without_a_policy_accepts_any_safe_names(tmp_path: Path) -> None:
    assert unpack(pack({"deep/er/x.txt": b"x"}), tmp_path) == ["deep/er/x.txt"]


@pytest.mark.parametrize(
    ("tampered", "code"),
    [
        (member("warmup.py", b"", tarfile.SYMTYPE, link="/etc/passwd"), "link"),
        (member("warmup.py", b"", tarfile.LNKTYPE, link="/etc/passwd"), "link"),
        (member("../../escaped.py"), "unsafe_path"),
        (member("/tmp/escaped.py"), "unsafe_path"),
    ],
    ids=["symlink", "hardlink", "traversal", "absolute"],
)
def test_unpack_refuses_a_tampered_blob_and_writes_nothing(
    tmp_path: Path, tampered: tuple[tarfile.TarInfo, bytes], code: str
) -> None:
    dest = tmp_path / "work"
    dest.mkdir()
    blob = make_tar([member("data/a.json", b"{}"), tampered])
    with pytest.raises(ArchiveError) as caught:
        unpack(blob, dest)
    assert caught.value.code == code
    assert list(tmp_path.rglob("*")) == [dest]


def test_unpack_applies_the_policy_names(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as caught:
        unpack(pack({"other.py": CODE}), tmp_path, POLICY)
    assert caught.value.code == "name_not_allowed"
    assert not list(tmp_path.iterdir())


def test_unpack_refuses_a_blob_that_is_not_gzip(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as caught:
        unpack(make_zip([("warmup.py", CODE)]), tmp_path)
    assert caught.value.code == "corrupt"


def test_unpack_does_not_follow_a_link_planted_in_the_destination(tmp_path: Path) -> None:
    dest, outside = tmp_path / "work", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "data").symlink_to(outside)
    with pytest.raises(OSError):
        unpack(pack(FILES), dest)
    assert not list(outside.iterdir())


def test_unpack_does_not_overwrite_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "warmup.py").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        unpack(pack({"warmup.py": CODE}), tmp_path)
    assert (tmp_path / "warmup.py").read_bytes() == b"keep"


def test_sha256_hex_is_the_hex_digest() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
