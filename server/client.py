"""The HTTP client behind the CLI's student commands (login, submit, status, leaderboard)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from platformdirs import user_config_dir

DEFAULT_SERVER = "http://127.0.0.1:8000"
FINISHED = {"graded", "failed", "error"}


class ClientError(Exception):
    """A request the server refused, with the server's own message."""


def config_path() -> Path:
    override = os.environ.get("AUTOGRADER_CLIENT_CONFIG")
    return Path(override) if override else Path(user_config_dir("autograder")) / "config.json"


@dataclass
class ClientConfig:
    server: str = DEFAULT_SERVER
    token: str | None = None
    course: str | None = None

    @classmethod
    def load(cls) -> ClientConfig:
        data: dict[str, Any] = {}
        path = config_path()
        if path.exists():
            data = json.loads(path.read_text())
        return cls(
            server=os.environ.get("AUTOGRADER_SERVER") or data.get("server") or DEFAULT_SERVER,
            token=os.environ.get("AUTOGRADER_TOKEN") or data.get("token"),
            course=os.environ.get("AUTOGRADER_COURSE") or data.get("course"),
        )

    def save(self) -> Path:
        """Write the config readable by its owner only: it holds a bearer token."""
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = json.dumps({"server": self.server, "token": self.token, "course": self.course}, indent=2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(payload)
        os.chmod(path, 0o600)
        return path


class Client:
    def __init__(self, config: ClientConfig, *, timeout: float = 60.0) -> None:
        self.config = config
        headers = {"authorization": f"Bearer {config.token}"} if config.token else {}
        self.http = httpx.Client(base_url=config.server.rstrip("/"), headers=headers, timeout=timeout)

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ClientError(f"{detail} (HTTP {response.status_code})")
        return response.json() if response.content else None

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            return self._check(self.http.request(method, url, **kwargs))
        except httpx.TransportError as exc:
            raise ClientError(f"Cannot reach the server at {self.config.server}: {exc}") from exc

    def login(self, username: str, password: str, token_name: str) -> str:
        body = {"username": username, "password": password, "token_name": token_name}
        return str(self.request("POST", "/api/auth/token", json=body)["token"])

    def me(self) -> dict[str, Any]:
        return dict(self.request("GET", "/api/auth/me"))

    def default_course(self) -> str:
        if self.config.course:
            return self.config.course
        enrollments = self.me()["user"]["enrollments"]
        if len(enrollments) != 1:
            names = ", ".join(e["course"] for e in enrollments) or "none"
            raise ClientError(f"Say which course with --course (your courses: {names}).")
        return str(enrollments[0]["course"])

    def submit(self, course: str, assignment: str, paths: list[Path]) -> dict[str, Any]:
        files = [("files", (name, path.read_bytes())) for name, path in upload_entries(paths)]
        url = f"/api/courses/{course}/assignments/{assignment}/submissions"
        return dict(self.request("POST", url, files=files))

    def submission(self, submission_id: int) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/submissions/{submission_id}"))

    def leaderboard(self, course: str, assignment: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/courses/{course}/assignments/{assignment}/leaderboard"))

    def follow(self, submission_id: int, *, timeout: float) -> Iterator[dict[str, Any]]:
        """Status snapshots until the submission finishes: server-sent events, polling if the stream breaks."""
        deadline = time.monotonic() + timeout
        try:
            with self.http.stream(
                "GET", f"/api/submissions/{submission_id}/events", timeout=None
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        snapshot = json.loads(line[6:])
                        yield snapshot
                        if snapshot["status"] in FINISHED:
                            return
                    if time.monotonic() > deadline:
                        raise ClientError(
                            f"Still not finished after {timeout:.0f} s; check later with status."
                        )
        except httpx.TransportError:
            pass
        while time.monotonic() < deadline:
            snapshot = self.submission(submission_id)
            yield snapshot
            if snapshot["status"] in FINISHED:
                return
            time.sleep(1.0)
        raise ClientError(f"Still not finished after {timeout:.0f} s; check later with status.")


# Never uploaded from a directory: caches, version control, editor and OS litter.
_SKIPPED_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints", ".pytest_cache", ".mypy_cache"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo", "~", ".swp")
_SKIPPED_NAMES = {".DS_Store", "Thumbs.db"}


def upload_entries(paths: list[Path]) -> list[tuple[str, Path]]:
    """(name to upload as, file) for each path: a file by its name, a directory as its files under its own name.

    ``hw5_inference/`` uploads ``hw5_inference/__init__.py``, ``hw5_inference/kv_cache.py``, ... so a package
    keeps its layout; caches and version-control folders are left out. Links are refused, not followed.
    """
    entries: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_symlink():
            raise ClientError(f"{path} is a link; submit the file it points to instead.")
        if path.is_file():
            entries.append((path.name, path))
        elif path.is_dir():
            root = path.resolve()
            for child in sorted(root.rglob("*")):
                relative = child.relative_to(root.parent)
                if any(part in _SKIPPED_DIRS for part in relative.parts) or child.name in _SKIPPED_NAMES:
                    continue
                if child.name.endswith(_SKIPPED_SUFFIXES):
                    continue
                if child.is_symlink():
                    raise ClientError(f"{child} is a link; links cannot be submitted.")
                if child.is_file():
                    entries.append((relative.as_posix(), child))
        else:
            raise ClientError(f"{path} is not a file or a directory.")
    if not entries:
        raise ClientError("There is nothing to submit.")
    names = [name for name, _ in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ClientError(f"{duplicates[0]} is given twice.")
    return entries
