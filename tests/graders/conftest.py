"""Run the real runner stub as a plain subprocess (no sandbox) with pipes, as the worker does inside one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from graders.harness import GradeReport, grade
from graders.package import AssignmentPackage, load_package, runner_argv, runner_files
from graders.protocol import Channel
from tests.graders.students import WARMUP


@dataclass
class Runner:
    process: subprocess.Popen
    channel: Channel
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def runner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of exactly the files the sandbox's /runner gets."""
    directory = tmp_path_factory.mktemp("runner")
    for path in runner_files():
        shutil.copy(path, directory / path.name)
    return directory


@pytest.fixture(scope="session")
def warmup_package() -> AssignmentPackage:
    return load_package(WARMUP)


def runner_options(package: AssignmentPackage) -> list[str]:
    """What runner_argv adds after ``--module NAME`` (call monitors) for this package."""
    argv = runner_argv(package)
    return argv[argv.index("--module") + 2 :]


@contextmanager
def start_runner(
    runner_dir: Path,
    workdir: Path,
    module: str,
    options: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Runner]:
    """Start runner.py on ``workdir`` like the sandbox does; kill it on the way out whatever happened."""
    stderr_path = workdir.parent / f"{workdir.name}.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-B",
                str(runner_dir / "runner.py"),
                "--module",
                module,
                "--workdir",
                str(workdir),
                *(options or []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=workdir,
            env=env,
        )
    assert process.stdin is not None and process.stdout is not None
    runner = Runner(process, Channel(process.stdout, process.stdin, default_timeout=60), stderr_path)
    try:
        yield runner
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdin, process.stdout):
            stream.close()


@dataclass
class Graded:
    report: GradeReport
    returncode: int | None  # None: the runner was still running when grading ended (and was killed)
    stderr: str

    def outcome(self, name: str):
        return next(test for test in self.report.tests if test.name == name)

    def failed_tests(self) -> set[str]:
        return {test.name for test in self.report.tests if not test.passed}


GradeSource = Callable[..., Graded]


@pytest.fixture
def grade_source(runner_dir: Path, warmup_package: AssignmentPackage, tmp_path: Path) -> GradeSource:
    """Grade a student's warmup.py given as source text; keyword arguments override package fields."""

    def run(source: str, *, benchmarks: bool = False, seed: int = 1234, **overrides: object) -> Graded:
        package = replace(warmup_package, **overrides) if overrides else warmup_package
        workdir = tmp_path / f"work{len(list(tmp_path.iterdir()))}"
        workdir.mkdir()
        (workdir / f"{package.module}.py").write_text(source)
        with start_runner(runner_dir, workdir, package.module, runner_options(package)) as runner:
            report = grade(package, runner.channel, seed=seed, benchmarks=benchmarks)
            runner.process.stdin.close()  # a runner waiting for the next request sees EOF and exits
            try:
                returncode: int | None = runner.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                returncode = None
        return Graded(report, returncode, runner.stderr())

    return run


PackageGrader = Callable[..., Graded]


@pytest.fixture(scope="session")
def packages() -> Callable[[Path], AssignmentPackage]:
    """``packages(path)``: the assignment package at ``path``, loaded once per test session."""
    loaded: dict[Path, AssignmentPackage] = {}

    def load(path: Path) -> AssignmentPackage:
        key = Path(path).resolve()
        if key not in loaded:
            loaded[key] = load_package(key)
        return loaded[key]

    return load


def _write_submission(workdir: Path, files: Path | Mapping[str, str | bytes]) -> None:
    if isinstance(files, Path):
        shutil.copytree(files, workdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        return
    for relative, content in files.items():
        target = workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


@pytest.fixture
def grade_package(
    runner_dir: Path, packages: Callable[[Path], AssignmentPackage], tmp_path: Path
) -> PackageGrader:
    """Grade a submission of the package at ``package_dir`` with the real runner stub (no sandbox).

    ``files``: a directory copied as the submission (e.g. the package's ``solution/``), or a mapping of
    relative paths to file contents. Keyword arguments beyond ``benchmarks`` and ``seed`` override package
    fields (e.g. ``call_timeout_s``).
    """

    def run(
        package_dir: Path,
        files: Path | Mapping[str, str | bytes],
        *,
        benchmarks: bool = False,
        seed: int = 1234,
        **overrides: object,
    ) -> Graded:
        package = packages(package_dir)
        if overrides:
            package = replace(package, **overrides)
        workdir = tmp_path / f"work{len(list(tmp_path.iterdir()))}"
        workdir.mkdir()
        _write_submission(workdir, files)
        with start_runner(runner_dir, workdir, package.module, runner_options(package)) as runner:
            report = grade(package, runner.channel, seed=seed, benchmarks=benchmarks)
            runner.process.stdin.close()
            try:
                returncode: int | None = runner.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                returncode = None
        return Graded(report, returncode, runner.stderr())

    return run


def run_public_tests(
    package_dir: Path, files: Path | Mapping[str, str | bytes] | None, *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the handout's public tests as a student would: the handout, with ``files`` copied over it.

    ``files`` None runs them against the untouched handout. Returns the finished pytest process (output in
    ``stdout``).
    """
    with tempfile.TemporaryDirectory(prefix="handout-") as directory:
        workdir = Path(directory) / "handout"
        shutil.copytree(Path(package_dir) / "handout", workdir, ignore=shutil.ignore_patterns("__pycache__"))
        if files is not None:
            _write_submission(workdir, files)
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "--no-header", "."],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
