"""Run the real runner stub as a plain subprocess (no sandbox) with pipes, as the worker does inside one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
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
