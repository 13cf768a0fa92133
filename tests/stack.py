"""Starting the real server and worker as subprocesses, as `autograder up` does, for integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    """A server and workers sharing one environment (database, broker, data dir)."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.scratch = tempfile.mkdtemp(prefix="ag-scratch-", dir="/tmp")
        self.env = {
            **os.environ,
            "AUTOGRADER_SANDBOX__SCRATCH_DIR": self.scratch,
            **env,
            "PYTHONUNBUFFERED": "1",
        }
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def cli(
        self,
        *args: str,
        input_text: str | None = None,
        timeout: float = 300,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", *args],
            env={**self.env, **(env or {})},
            cwd=REPO,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [sys.executable, "-m", "server.cli", *args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_server(self) -> None:
        self.server = self._spawn("server", "serve", "--port", str(self.port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.server.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"server did not start:\n{self.read_log('server')}")

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn(f"worker-{len(self.workers)}", "worker")
        self.workers.append(worker)
        return worker

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole process group: the worker, its pool children and anything they started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def read_log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        self._stop_processes()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _stop_processes(self) -> None:
        for process in [*self.workers, *([self.server] if self.server else [])]:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.kill(process)
