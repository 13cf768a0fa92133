"""The sandbox interface every backend implements.

A backend runs untrusted student code described by a `SandboxSpec` in an isolated process tree and hands
back a `SandboxSession`: the trusted grader speaks its framed protocol over the session's stdin/stdout, then
collects a `SandboxResult`, whose `describe()` is safe to show to the student.
"""

from __future__ import annotations

import contextlib
import signal
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO, Self

SANDBOX_BACKENDS = ("local", "docker")

WORKDIR_INSIDE = "/work"
# Paths inside the sandbox that every backend mounts itself; extra binds may not land on or under them.
RESERVED_INSIDE_PATHS = (WORKDIR_INSIDE, "/tmp", "/proc", "/dev")  # noqa: S108


class SandboxError(RuntimeError):
    """The sandbox infrastructure is at fault, not the student's code; the message tells staff what to fix."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run. docs/sandbox.md says what enforces each one, per backend."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 60  # per process
    memory_bytes: int = 4 * 2**30
    max_processes: int = 64  # processes and threads of the student's code
    max_file_bytes: int = 64 * 2**20  # largest file the code may write
    max_open_files: int = 256
    log_bytes: int = 64 * 2**10  # cap on the captured stderr
    tmp_bytes: int = 256 * 2**20  # size of the private /tmp

    def __post_init__(self) -> None:
        for limit in fields(self):
            if not getattr(self, limit.name) > 0:
                raise ValueError(f"Limits.{limit.name} must be positive, got {getattr(self, limit.name)!r}")


@dataclass(frozen=True)
class SandboxSpec:
    """What to run and how: `argv[0] == "python"` means the sandbox runtime's interpreter.

    `workdir` is the host directory with the student's files, bound read-write at /work (the cwd); it is the
    only host path the code can write. `ro_binds` maps further host paths to absolute paths inside, read-only.
    `env` is added to a cleared, minimal environment.
    """

    argv: Sequence[str]
    workdir: Path
    ro_binds: Mapping[Path, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    gpu: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.argv, str) or not self.argv:
            raise ValueError("SandboxSpec.argv must be a non-empty sequence of strings, not a shell string")
        for host_path, inside in self.ro_binds.items():
            target = PurePosixPath(inside)
            if not target.is_absolute() or ".." in target.parts or target == PurePosixPath("/"):
                raise ValueError(f"ro_binds[{host_path}]: {inside!r} must be an absolute path below /")
            for reserved in RESERVED_INSIDE_PATHS:
                if target == PurePosixPath(reserved) or target.is_relative_to(reserved):
                    raise ValueError(
                        f"ro_binds[{host_path}]: {inside!r} is inside {reserved}, which is reserved"
                    )


@dataclass
class SandboxResult:
    """How a sandboxed run ended and what it used. `limits` lets `describe()` name the limit that was hit."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    wall_seconds: float
    cpu_seconds: float | None
    max_rss_bytes: int | None
    oom_killed: bool
    log: bytes
    log_truncated: bool
    limits: Limits | None = None

    def describe(self) -> str:
        """One plain-language line for the student, e.g. "exceeded the 60 s time limit"."""
        limits = self.limits
        if self.timed_out:
            return (
                f"exceeded the {_seconds(limits.wall_seconds)} time limit"
                if limits
                else "exceeded the time limit"
            )
        if self.oom_killed:
            return (
                f"killed: out of memory (limit {_size(limits.memory_bytes)})"
                if limits
                else "killed: out of memory"
            )
        if self.signal is not None:
            return self._describe_signal(self.signal)
        if self.exit_code == 0:
            return "exited normally (code 0)"
        if self._raised_memory_error():
            limit = f"; limit {_size(limits.memory_bytes)}" if limits else ""
            return f"exited with code {self.exit_code} after running out of memory (MemoryError{limit})"
        return f"exited with code {self.exit_code}"

    def _describe_signal(self, signum: int) -> str:
        limits = self.limits
        cpu_limit_hit = (
            limits is not None
            and self.cpu_seconds is not None
            and signum == signal.SIGKILL
            and self.cpu_seconds >= limits.cpu_seconds
        )
        if signum == signal.SIGXCPU or cpu_limit_hit:
            return (
                f"exceeded the {limits.cpu_seconds} s CPU time limit"
                if limits
                else "exceeded the CPU time limit"
            )
        if signum == signal.SIGXFSZ:
            limit = f" {_size(limits.max_file_bytes)}" if limits else ""
            return f"killed: tried to write a file larger than the{limit} file size limit"
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        explanation = _SIGNAL_EXPLANATIONS.get(signum)
        return f"killed by signal {name} ({explanation})" if explanation else f"killed by signal {name}"

    def _raised_memory_error(self) -> bool:
        # The traceback that ended the program is at the end of the log, which the capture always keeps.
        return b"MemoryError" in self.log[-2048:]


_SIGNAL_EXPLANATIONS: dict[int, str] = {
    signal.SIGSEGV: "segmentation fault: invalid memory access",
    signal.SIGBUS: "bus error: invalid memory access",
    signal.SIGFPE: "arithmetic error",
    signal.SIGILL: "illegal instruction",
    signal.SIGABRT: "aborted",
}


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _size(value: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} bytes"


class SandboxSession(ABC):
    """A running sandboxed process: `stdin`/`stdout` are pipes to its fd 0 and fd 1; stderr goes to the log."""

    stdin: BinaryIO
    stdout: BinaryIO
    pid: int

    @abstractmethod
    def wait(self, timeout: float | None = None) -> SandboxResult:
        """Wait for the process tree to end; raise TimeoutError if `timeout` passes first (nothing is killed)."""

    @abstractmethod
    def kill(self) -> None:
        """Kill the whole process tree. Idempotent."""

    def close(self) -> None:
        """Close our ends of the stdin and stdout pipes."""
        for pipe in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                pipe.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.kill()
            self.wait()
        finally:
            self.close()


class Sandbox(ABC):
    """A sandbox backend."""

    name: str

    @abstractmethod
    def check(self) -> None:
        """Preflight: raise SandboxError saying what to fix if this backend cannot run sandboxes here."""

    @abstractmethod
    def run(self, spec: SandboxSpec) -> SandboxSession:
        """Start `spec.argv` in a fresh sandbox and return the session; the caller must wait or exit it."""

    def prepare_workdir(self, path: Path) -> None:
        """Make `path` a workdir the sandbox user can use. This default only creates it: enough for backends
        whose sandbox user can already write what the worker creates."""
        Path(path).mkdir(parents=True, exist_ok=True)


def get_sandbox(name: str, **options: Any) -> Sandbox:
    """The backend called `name`, built with `options` (its constructor's keyword arguments)."""
    if name == "local":
        from worker.sandbox.local import LocalSandbox

        return LocalSandbox(**options)
    if name == "docker":
        from worker.sandbox.docker import DockerSandbox

        return DockerSandbox(**options)
    raise SandboxError(f"unknown sandbox backend {name!r}; choose one of: {', '.join(SANDBOX_BACKENDS)}")
