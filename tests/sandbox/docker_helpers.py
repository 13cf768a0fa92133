"""A Docker-compatible daemon and an image for the docker sandbox's tests, built here without any registry.

The daemon is podman's Docker-compatible API service, which scripts/ensure-podman.sh installs and starts
(root + apt); AUTOGRADER_TEST_DOCKER_HOST points the tests at another daemon instead. No registry can be
reached, so the image is imported from a tarball made on the spot: an almost empty root file system (the
mount points, /tmp with mode 1777, and the merged-/usr links /bin, /lib, /lib64, /sbin) into which every run
binds the host's /usr read-only (`DockerSandbox(runtime_binds=...)`). The host's /usr/bin/python3 and its
standard library are then the sandbox's runtime: the tests run plain Python programs, no torch.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOCKET = "unix:///run/podman/podman.sock"
TEST_IMAGE = "localhost/autograder-sandbox-test:1"
HOST_PYTHON = "/usr/bin/python3"
RUNTIME_BINDS = {Path("/usr"): "/usr"}
# Mount points, and /tmp with the mode a real image gives it (podman copies it onto the tmpfs mounted there).
_DIRECTORIES = {
    "usr": 0o755,
    "etc": 0o755,
    "work": 0o755,
    "runner": 0o755,
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "tmp": 0o1777,
}
_MERGED_USR_LINKS = ("bin", "lib", "lib64", "sbin")


def docker_host() -> str:
    return os.environ.get("AUTOGRADER_TEST_DOCKER_HOST", DEFAULT_SOCKET)


@functools.cache
def daemon() -> tuple[Any, str | None]:
    """(client, None) when a daemon answers, else (None, the reason the tests skip)."""
    try:
        import docker.errors

        import docker
    except ImportError:
        return None, "the docker Python package is not installed: pip install docker"
    if not hasattr(docker, "DockerClient"):  # the repository's docker/ folder, seen as a namespace package
        return None, "the docker Python package is not installed: pip install docker"
    client = _connect()
    if client is not None or "AUTOGRADER_TEST_DOCKER_HOST" in os.environ:
        return (client, None) if client is not None else (None, f"no daemon answers at {docker_host()}")
    # Installs podman if needed (a minute or two, once per machine) and starts its API service.
    script = REPO / "scripts" / "ensure-podman.sh"
    completed = subprocess.run([str(script)], capture_output=True, text=True, timeout=600, check=False)
    client = _connect()
    if client is None:
        notes = completed.stderr.strip() or "no message"
        return (
            None,
            f"no Docker-compatible daemon answers at {docker_host()}; scripts/ensure-podman.sh: {notes}",
        )
    return client, None


def _connect() -> Any:
    """A client of the daemon at docker_host(), or None if it does not answer."""
    import docker.errors

    import docker

    try:
        client = docker.DockerClient(base_url=docker_host(), timeout=120)
        client.ping()
    except docker.errors.DockerException:
        return None
    return client


def root_filesystem_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, mode in _DIRECTORIES.items():
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
        for name in _MERGED_USR_LINKS:
            entry = tarfile.TarInfo(name)
            entry.type, entry.linkname, entry.mode = tarfile.SYMTYPE, f"usr/{name}", 0o777
            tar.addfile(entry)
    return buffer.getvalue()


def ensure_test_image(client: Any) -> str:
    """Import the test image unless the daemon has it already; return its name."""
    import docker.errors

    try:
        client.api.inspect_image(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        repository, _, tag = TEST_IMAGE.rpartition(":")
        reply = client.api.import_image_from_data(root_filesystem_tar())
        image_id = json.loads(reply.strip().splitlines()[-1])["status"]
        # podman's compatible API ignores the import's own tag parameter; tagging works on both.
        client.api.tag(image_id, repository, tag)
    return TEST_IMAGE


def host_runtime_is_merged_usr() -> bool:
    """The image's links assume a merged /usr (Debian 12, Ubuntu 22.04 and later): /lib -> usr/lib."""
    return (
        all(Path(f"/{name}").is_symlink() or not Path(f"/{name}").exists() for name in _MERGED_USR_LINKS)
        and Path(HOST_PYTHON).exists()
    )
