"""Every bad upload gets a clear 4xx message and changes nothing."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from server.assignments.models import Assignment
from server.db import utcnow
from server.submissions.models import Blob, Submission
from tests.api.helpers import submit
from tests.conftest import World


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def symlink_tar() -> bytes:
    member = tarfile.TarInfo("warmup.py")
    member.type = tarfile.SYMTYPE
    member.linkname = "/etc/passwd"
    return tar_with(member)


def device_tar() -> bytes:
    member = tarfile.TarInfo("warmup.py")
    member.type = tarfile.CHRTYPE
    member.devmajor, member.devminor = 1, 3
    return tar_with(member)


def zip_bomb() -> bytes:
    return zip_of({"warmup.py": b"\0" * (64 * 2**20)})


def non_utf8_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("warmup.py")
        archive.writestr(info, b"x = 1\n")
    raw = bytearray(buffer.getvalue())
    # Rewrite the name in both headers to bytes that are not UTF-8 (the zip's UTF-8 flag stays unset).
    return bytes(raw.replace(b"warmup.py", b"w\xffrmup.py"))


Case = tuple[str, Callable[[], bytes], int, str]

CASES: list[Case] = [
    ("warmup.py", lambda: b"", 400, "empty"),
    ("solution.zip", lambda: zip_of({}), 400, "empty"),
    ("warmup.py", lambda: b"x" * (2 * 2**20), 413, "too_large"),
    ("notes.txt", lambda: b"hello", 400, "name_not_allowed"),
    ("solution.zip", lambda: zip_of({"../warmup.py": b"x = 1"}), 400, "unsafe_path"),
    ("solution.zip", lambda: zip_of({"/etc/warmup.py": b"x = 1"}), 400, "unsafe_path"),
    ("solution.tar.gz", symlink_tar, 400, "link"),
    ("solution.tar.gz", device_tar, 400, "special_file"),
    ("solution.zip", zip_bomb, 400, "bomb"),
    ("solution.zip", lambda: zip_of({"warmup.py": b"x = 1"})[:40], 400, "corrupt"),
    ("solution.tar.gz", lambda: b"\x1f\x8b this is not gzip", 400, "corrupt"),
    ("solution.zip", non_utf8_zip, 400, "bad_name_encoding"),
]


def assert_nothing_stored(world: World) -> None:
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(Submission)) == 0
        assert session.scalar(select(func.count()).select_from(Blob)) == 0


@pytest.mark.parametrize(
    ("name", "make", "status", "code"), CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_upload_is_refused_clearly(
    world: World, name: str, make: Callable[[], bytes], status: int, code: str
) -> None:
    response = submit(world, world.alice, make(), name=name)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert len(body["detail"]) > 15 and "Traceback" not in body["detail"]
    assert_nothing_stored(world)


def test_too_many_files(world: World) -> None:
    files = [("files", (f"f{i}.py", b"x = 1\n")) for i in range(40)]
    response = world.client.post(
        f"/api/courses/{world.course}/assignments/warmup/submissions",
        files=files,
        headers=world.alice.headers,
    )
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_files"
    assert_nothing_stored(world)


def test_no_files_at_all(world: World) -> None:
    response = world.client.post(
        f"/api/courses/{world.course}/assignments/warmup/submissions",
        data={"x": "1"},
        headers=world.alice.headers,
    )
    assert response.status_code == 400
    assert response.json()["code"] == "empty"
    assert_nothing_stored(world)


def test_unknown_assignment(world: World, solution_bytes: bytes) -> None:
    response = submit(world, world.alice, solution_bytes, slug="hw99")
    assert response.status_code == 404
    assert "hw99" in response.json()["detail"]
    assert_nothing_stored(world)


def test_unpublished_assignment(world: World, solution_bytes: bytes) -> None:
    with world.session() as session:
        session.execute(update(Assignment).values(published=False))
        session.commit()
    response = submit(world, world.alice, solution_bytes)
    assert response.status_code == 404
    assert_nothing_stored(world)


def test_closed_and_not_yet_open_assignments(world: World, solution_bytes: bytes) -> None:
    with world.session() as session:
        session.execute(update(Assignment).values(closes_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    closed = submit(world, world.alice, solution_bytes)
    assert closed.status_code == 409 and "closed" in closed.json()["detail"]
    with world.session() as session:
        session.execute(update(Assignment).values(closes_at=None, opens_at=utcnow() + timedelta(days=1)))
        session.commit()
    early = submit(world, world.alice, solution_bytes)
    assert early.status_code == 409 and "opens" in early.json()["detail"]
    assert_nothing_stored(world)


def test_wrong_token(world: World, solution_bytes: bytes) -> None:
    response = world.client.post(
        f"/api/courses/{world.course}/assignments/warmup/submissions",
        files=[("files", ("warmup.py", solution_bytes))],
        headers={"authorization": "Bearer agt_wrong"},
    )
    assert response.status_code == 401
    assert_nothing_stored(world)


def test_request_body_over_the_server_limit_is_cut_off(
    configure: Callable[..., object], solution_bytes: bytes
) -> None:
    from tests.conftest import build_world

    world = build_world(configure(uploads__max_request_bytes=str(64 * 1024)))  # type: ignore[arg-type]
    with world.client:
        response = submit(world, world.alice, b"#" * (200 * 1024))
        assert response.status_code == 413
        assert "limit" in response.json()["detail"]
        assert_nothing_stored(world)


def test_a_good_submission_is_stored_once_per_content(world: World, solution_bytes: bytes) -> None:
    first = submit(world, world.alice, solution_bytes)
    second = submit(world, world.bob, solution_bytes)
    assert first.status_code == second.status_code == 201
    assert first.json()["status"] == "queued" and first.json()["queue_position"] == 1
    assert second.json()["queue_position"] == 2
    assert first.json()["archive_sha256"] == second.json()["archive_sha256"]
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(Blob)) == 1
