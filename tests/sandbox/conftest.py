"""Fixtures for the sandbox tests: a checked LocalSandbox and workdirs its uid can use."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.sandbox import LocalSandbox


@pytest.fixture(scope="session")
def sandbox() -> LocalSandbox:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    local = LocalSandbox()
    local.check()
    return local


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A host directory the sandbox uid may traverse but not list.

    pytest's tmp_path lies under /tmp/pytest-of-<user>, which is mode 0700, so it cannot hold workdirs.
    """
    base = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def workdir(sandbox: LocalSandbox, scratch: Path) -> Path:
    path = scratch / "work"
    sandbox.prepare_workdir(path)
    return path
