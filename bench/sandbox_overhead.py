"""Start-up cost of each sandbox backend, against a bare subprocess.

For every backend that is available here (local bubblewrap; docker when ``get_sandbox("docker", image=...)``
exists and its ``check()`` passes), runs ``python -c pass`` and ``python -c "import torch"`` N times inside a
fresh sandbox and N times as a bare subprocess of this interpreter, and prints the medians and their ratio.
A backend that is not available is skipped with a line saying why.

    .venv/bin/python bench/sandbox_overhead.py [--repeats 7] [--docker-image IMAGE]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.sandbox import Limits, Sandbox, SandboxError, SandboxSpec, get_sandbox  # noqa: E402

PROGRAMS = {"python -c pass": "pass", 'python -c "import torch"': "import torch"}


class RunFailed(Exception):
    """The program did not exit cleanly inside the sandbox (e.g. the image has no torch)."""


def median_seconds(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bare(code: str) -> Callable[[], None]:
    def run() -> None:
        subprocess.run([sys.executable, "-c", code], check=True)

    return run


def sandboxed(sandbox: Sandbox, workdir: Path, code: str) -> Callable[[], None]:
    spec = SandboxSpec(["python", "-c", code], workdir, limits=Limits(wall_seconds=120, cpu_seconds=120))

    def run() -> None:
        with sandbox.run(spec) as session:
            result = session.wait()
        if result.exit_code != 0:
            raise RunFailed(f"{result.describe()}: {result.log.decode(errors='replace').strip()[-300:]}")

    return run


def available(name: str, options: dict[str, Any]) -> Sandbox | str:
    """The backend, or why it is skipped."""
    try:
        sandbox = get_sandbox(name, **options)
        sandbox.check()
    except (SandboxError, TypeError, ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return sandbox


def docker_options(options: argparse.Namespace) -> dict[str, Any]:
    """The docker backend's options; with --host-runtime the image may be empty: the host's /usr and this
    venv are bound read-only (how tests/sandbox/test_docker.py runs podman without a registry)."""
    result: dict[str, Any] = {"image": options.docker_image}
    if options.host_runtime:
        result["runtime_binds"] = {Path("/usr"): "/usr", Path(sys.prefix).resolve(): "/opt/sandbox-python"}
        result["python"] = "/opt/sandbox-python/bin/python"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--host-runtime",
        action="store_true",
        help="docker: bind the host's /usr and this venv instead of using the image's own Python",
    )
    parser.add_argument(
        "--docker-image", help="the sandbox image for the docker backend (skipped without one)"
    )
    options = parser.parse_args()
    backends: dict[str, dict[str, Any] | str] = {
        "local": {},
        "docker": docker_options(options) if options.docker_image else "no --docker-image given",
    }

    baseline = {label: median_seconds(bare(code), options.repeats) for label, code in PROGRAMS.items()}
    print(f"median of {options.repeats} runs each")
    for label, seconds in baseline.items():
        print(f"  {'bare subprocess':16s} {label:26s} {seconds * 1e3:8.1f} ms")

    scratch = Path(tempfile.mkdtemp(prefix="sandbox-overhead-"))
    scratch.chmod(0o711)  # the sandbox uid must traverse it to reach its workdir
    try:
        for name, backend in backends.items():
            sandbox = backend if isinstance(backend, str) else available(name, backend)
            if isinstance(sandbox, str):
                print(f"  {name:16s} skipped: {sandbox}")
                continue
            workdir = scratch / name
            sandbox.prepare_workdir(workdir)
            for label, code in PROGRAMS.items():
                try:
                    seconds = median_seconds(sandboxed(sandbox, workdir, code), options.repeats)
                except RunFailed as exc:
                    print(f"  {name:16s} {label:26s} failed: {exc}")
                    continue
                ratio = seconds / baseline[label]
                extra = (seconds - baseline[label]) * 1e3
                print(f"  {name:16s} {label:26s} {seconds * 1e3:8.1f} ms  x{ratio:.2f}  (+{extra:.1f} ms)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
