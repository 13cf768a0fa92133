"""Run the real runner stub as a plain subprocess (no sandbox) with pipes, as the worker does inside one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

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
        return _grade_workdir(runner_dir, package, workdir, benchmarks=benchmarks, seed=seed, exit_timeout=1)

    return run


def _grade_workdir(
    runner_dir: Path,
    package: AssignmentPackage,
    workdir: Path,
    *,
    benchmarks: bool,
    seed: int,
    exit_timeout: float,
) -> Graded:
    """Grade the submission already written to ``workdir``; ``exit_timeout``: how long the runner may take to
    exit once grading is over before it is killed (returncode None)."""
    with start_runner(runner_dir, workdir, package.module, runner_options(package)) as runner:
        report = grade(package, runner.channel, seed=seed, benchmarks=benchmarks)
        runner.process.stdin.close()  # a runner waiting for the next request sees EOF and exits
        try:
            returncode: int | None = runner.process.wait(timeout=exit_timeout)
        except subprocess.TimeoutExpired:
            returncode = None
    return Graded(report, returncode, runner.stderr())


# What a test hands in over the package's handout: a directory (e.g. the package's solution/), a mapping
# {relative path: content}, or None for the untouched handout.
Files = Path | Mapping[str, str | bytes] | None


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


def _read_tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` as ``{relative posix path: content}``, ``__pycache__`` left out."""
    if not directory.is_dir():
        return {}
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def _as_files(files: Files) -> dict[str, bytes]:
    if files is None:
        return {}
    if isinstance(files, Path):
        return _read_tree(files)
    return {
        relative: content.encode() if isinstance(content, str) else content
        for relative, content in files.items()
    }


def _write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    for relative, content in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def submission_files(package: AssignmentPackage, files: Files) -> dict[str, bytes]:
    """A submission as a student makes it: their copy of the handout with ``files`` written over it.

    Of the handout, the files the package accepts are handed in (what an upload may carry: not the public
    tests, the README or data); every one of ``files`` is, accepted or not. So a package's ``solution/`` holds
    only the files a student writes.
    """
    handout = _read_tree(package.path / "handout")
    handed_in = {relative: content for relative, content in handout.items() if package.accepts_file(relative)}
    return handed_in | _as_files(files)


def grade_submission(
    runner_dir: Path,
    package: AssignmentPackage,
    workdir: Path,
    files: Files,
    *,
    benchmarks: bool = False,
    seed: int = 1234,
) -> Graded:
    """Grade ``files`` over the handout of ``package`` (see :func:`submission_files`) in ``workdir``, a new
    directory, with the real runner stub (no sandbox)."""
    workdir.mkdir()
    _write_files(workdir, submission_files(package, files))
    # Rank processes (hw5) and pending output may take a few seconds to wind down after the last call.
    return _grade_workdir(runner_dir, package, workdir, benchmarks=benchmarks, seed=seed, exit_timeout=10)


GradePackage = Callable[..., Graded]


@pytest.fixture
def grade_package(
    runner_dir: Path, packages: Callable[[Path], AssignmentPackage], tmp_path: Path
) -> GradePackage:
    """``grade_package(package_dir, files, benchmarks=False, seed=1234, **overrides)``: a fresh grading of
    ``files`` over the handout of the package at ``package_dir`` (see :func:`submission_files`).

    Keyword arguments beyond ``benchmarks`` and ``seed`` override package fields (e.g. ``call_timeout_s``).
    """

    def run(
        package_dir: Path,
        files: Files = None,
        *,
        benchmarks: bool = False,
        seed: int = 1234,
        **overrides: object,
    ) -> Graded:
        package = packages(package_dir)
        if overrides:
            package = replace(package, **overrides)
        workdir = tmp_path / f"work{len(list(tmp_path.iterdir()))}"
        return grade_submission(runner_dir, package, workdir, files, benchmarks=benchmarks, seed=seed)

    return run


def run_public_tests(
    package_dir: Path,
    files: Files,
    *,
    selection: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run the handout's public tests as a student would: the handout, with ``files`` copied over it.

    ``files`` None runs them against the untouched handout; ``selection`` runs only the tests that pytest's
    ``-k`` expression selects. Returns the finished pytest process (output in ``stdout``).
    """
    with tempfile.TemporaryDirectory(prefix="handout-") as directory:
        workdir = Path(directory) / "handout"
        shutil.copytree(Path(package_dir) / "handout", workdir, ignore=shutil.ignore_patterns("__pycache__"))
        _write_files(workdir, _as_files(files))
        options = ["-q", "-p", "no:cacheprovider", "-x", "--no-header"]
        if selection is not None:
            options += ["-k", selection]
        return subprocess.run(
            [sys.executable, "-m", "pytest", *options, "."],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )


def _files_key(files: Files) -> object:
    if files is None:
        return None
    if isinstance(files, Path):
        return files.resolve()
    return tuple(sorted(files.items()))


@dataclass(frozen=True)
class Grading:
    """A grading of ``files`` over the handout of the package at ``package_dir`` (see submission_files)."""

    package_dir: Path
    files: Files = None
    benchmarks: bool = False
    seed: int = 1234

    def key(self) -> tuple:
        return (
            "grading",
            Path(self.package_dir).resolve(),
            _files_key(self.files),
            self.benchmarks,
            self.seed,
        )


@dataclass(frozen=True)
class PublicRun:
    """The handout's public tests on ``files`` over the handout (see :func:`run_public_tests`)."""

    package_dir: Path
    files: Files = None
    selection: str | None = None  # a pytest -k expression; None: every public test

    def key(self) -> tuple:
        return ("public", Path(self.package_dir).resolve(), _files_key(self.files), self.selection)


class PackageGrader:
    """Grades submissions and runs public tests, each distinct one once, for the tests of one module.

    :meth:`grade` and :meth:`public_tests` give the result of a job, running it if nobody has; :meth:`start`
    runs a list of jobs in the background, a few at a time, and those calls then wait for theirs.
    """

    def __init__(
        self,
        runner_dir: Path,
        packages: Callable[[Path], AssignmentPackage],
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        self._runner_dir = runner_dir
        self._packages = packages
        self._tmp_path_factory = tmp_path_factory
        self._results: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._torch_threads: int | None = None

    def grade(
        self, package_dir: Path, files: Files = None, *, benchmarks: bool = False, seed: int = 1234
    ) -> Graded:
        return self.result(Grading(package_dir, files, benchmarks, seed))

    def public_tests(
        self, package_dir: Path, files: Files = None, *, selection: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.result(PublicRun(package_dir, files, selection))

    def result(self, job: Grading | PublicRun) -> Any:
        """The job's result (or its exception), run here unless it was started already."""
        key = job.key()
        with self._lock:
            future = self._results.get(key)
            run_here = future is None
            if future is None:
                future = self._results[key] = Future()
        if run_here:
            try:
                future.set_result(self._run(job))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()

    def start(self, jobs: Iterable[Grading | PublicRun], *, workers: int = 2) -> None:
        """Run ``jobs`` in the background, ``workers`` at a time, in order; jobs already started are skipped.

        Gradings spend their time in the runner processes and public runs in their own pytest processes, so
        two at a time keep both cores of a small machine busy. From then to the end of the module the grader's
        own torch work (the references, on small inputs) runs on one thread, as the harness's does while it
        times: OpenMP threads spinning between tiny parallel regions would take CPU from the runners.
        """
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grading")
                self._torch_threads = torch.get_num_threads()
                torch.set_num_threads(1)
            for job in jobs:
                if isinstance(job, Grading):
                    # Loaded here, so that its tests.py is imported once, by one thread.
                    self._packages(job.package_dir)
                if job.key() not in self._results:
                    self._results[job.key()] = self._pool.submit(self._run, job)

    def close(self) -> None:
        """Wait for what has started, drop what has not, and give torch its threads back."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._torch_threads is not None:
            torch.set_num_threads(self._torch_threads)

    def _run(self, job: Grading | PublicRun) -> Any:
        if isinstance(job, PublicRun):
            return run_public_tests(job.package_dir, job.files, selection=job.selection)
        workdir = self._tmp_path_factory.mktemp("grading") / "work"
        return grade_submission(
            self._runner_dir,
            self._packages(job.package_dir),
            workdir,
            job.files,
            benchmarks=job.benchmarks,
            seed=job.seed,
        )


@pytest.fixture(scope="module")
def package_grader(
    runner_dir: Path, packages: Callable[[Path], AssignmentPackage], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PackageGrader]:
    """Each distinct grading and public-test run of a test module, made once and shared by its tests."""
    grader = PackageGrader(runner_dir, packages, tmp_path_factory)
    yield grader
    grader.close()
