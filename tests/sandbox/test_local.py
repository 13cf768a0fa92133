"""The local (bubblewrap) sandbox, attacked for real: every test runs hostile code in an actual sandbox."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from worker.sandbox import (
    Limits,
    LocalSandbox,
    SandboxError,
    SandboxResult,
    SandboxSpec,
    get_sandbox,
)
from worker.sandbox.local import RELOCATED_RUNTIME, discover_cgroups, locate_runtime

REPO = Path(__file__).resolve().parents[2]

sandboxed = pytest.mark.sandbox


def run_python(
    sandbox: LocalSandbox,
    workdir: Path,
    code: str,
    *args: str,
    stdin: bytes = b"",
    timeout: float = 60.0,
    **limits: Any,
) -> tuple[SandboxResult, bytes]:
    """Run `code` to the end; return its result and everything it wrote to stdout."""
    spec = SandboxSpec(["python", "-c", textwrap.dedent(code), *args], workdir, limits=Limits(**limits))
    with sandbox.run(spec) as session:
        writer = threading.Thread(target=_feed, args=(session.stdin, stdin), daemon=True)
        writer.start()
        output = session.stdout.read()
        result = session.wait(timeout)
        writer.join(timeout)
    return result, output


def _feed(pipe: BinaryIO, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError):
        pipe.write(data)
        pipe.close()


def inside(sandbox: LocalSandbox, workdir: Path, code: str, *args: str, **limits: Any) -> Any:
    """Run `code`, which prints one JSON value as its last line, and return that value."""
    result, output = run_python(sandbox, workdir, code, *args, **limits)
    assert result.exit_code == 0, result.log.decode(errors="replace")
    return json.loads(output.decode().strip().splitlines()[-1])


def processes_with(marker: str) -> list[int]:
    """Host pids of the processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_until_gone(marker: str, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# ---------------------------------------------------------------------------------------------------------
# Talking to the code


@sandboxed
def test_stdin_and_stdout_carry_bytes_both_ways(sandbox: LocalSandbox, workdir: Path) -> None:
    payload = os.urandom(512 * 1024)  # larger than a pipe buffer in both directions
    code = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"
    result, output = run_python(sandbox, workdir, code, stdin=payload)
    assert result.exit_code == 0, result.log
    assert output == payload[::-1]


@sandboxed
def test_torch_imports_and_computes(sandbox: LocalSandbox, workdir: Path) -> None:
    code = """
        import json, torch
        x = torch.arange(6.0).reshape(2, 3)
        print(json.dumps((x @ x.T).tolist()))
    """
    assert inside(sandbox, workdir, code) == [[5.0, 14.0], [14.0, 50.0]]


@sandboxed
def test_environment_is_minimal_and_spec_env_is_added(
    sandbox: LocalSandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGRADER_SECRET_KEY", "do-not-leak")
    spec = SandboxSpec(
        ["python", "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        workdir,
        env={"GRADER_MODE": "x"},
    )
    with sandbox.run(spec) as session:
        env = json.loads(session.stdout.read())
        session.wait(30)
    assert "AUTOGRADER_SECRET_KEY" not in env
    assert not any("do-not-leak" in value for value in env.values())
    assert env["GRADER_MODE"] == "x"
    assert env["HOME"] == "/tmp"


# ---------------------------------------------------------------------------------------------------------
# What the code can see and touch


@sandboxed
def test_host_files_outside_the_workdir_are_not_visible(
    sandbox: LocalSandbox, workdir: Path, scratch: Path
) -> None:
    secret = scratch / "other" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("hidden test answers")
    secret.chmod(0o644)
    secret.parent.chmod(0o755)
    code = """
        import json, os, sys
        seen = {path: os.path.exists(path) for path in sys.argv[1:]}
        try:
            seen["/root listing"] = os.listdir("/root")
        except OSError:
            pass
        seen["/etc"] = sorted(os.listdir("/etc"))
        print(json.dumps(seen))
    """
    paths = [str(secret), str(REPO / "graders"), str(REPO / "pyproject.toml"), "/etc/shadow", "/etc/passwd",
             "/var", "/home", "/sys/fs/cgroup"]  # fmt: skip
    seen = inside(sandbox, workdir, code, *paths)
    assert {path: seen[path] for path in paths} == dict.fromkeys(paths, False)
    assert "/root listing" not in seen
    assert set(seen["/etc"]) <= {"ld.so.cache", "nsswitch.conf", "localtime"}


@sandboxed
def test_code_runs_without_privileges(sandbox: LocalSandbox, workdir: Path) -> None:
    code = """
        import json, os
        status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
        keys = ["Uid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp"]
        print(json.dumps({key: status[key].split()[0] for key in keys}))
    """
    status = inside(sandbox, workdir, code)
    expected_uid = "65534" if os.geteuid() == 0 else str(os.geteuid())
    assert status["Uid"] == expected_uid
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"  # setuid binaries in /usr grant nothing
    if platform.machine() == "x86_64":
        assert status["Seccomp"] == "2"  # filter mode


@sandboxed
def test_other_processes_are_not_visible(sandbox: LocalSandbox, workdir: Path) -> None:
    code = "import json, os; print(json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))"
    assert inside(sandbox, workdir, code) == [1, 2]  # bwrap's init and the code itself


@sandboxed
def test_writes_outside_the_workdir_fail(sandbox: LocalSandbox, workdir: Path, scratch: Path) -> None:
    runner = scratch / "runner"
    runner.mkdir(mode=0o755)
    (runner / "stub.py").write_text("original")
    (runner / "stub.py").chmod(0o644)
    code = """
        import json, os
        failed = {}
        for path in ["/usr/evil", "/evil", "/etc/evil", "/dev/evil", "/runner/evil", "/runner/stub.py", "/proc/evil"]:
            try:
                with open(path, "w") as handle:
                    handle.write("x")
                failed[path] = False
            except OSError:
                failed[path] = True
        print(json.dumps(failed))
    """
    spec_binds = {runner: "/runner"}
    spec = SandboxSpec(["python", "-c", textwrap.dedent(code)], workdir, ro_binds=spec_binds)
    with sandbox.run(spec) as session:
        failed = json.loads(session.stdout.read())
        session.wait(30)
    assert all(failed.values()), failed
    assert (runner / "stub.py").read_text() == "original"
    assert sorted(p.name for p in runner.iterdir()) == ["stub.py"]


@sandboxed
def test_tmp_is_private_and_workdir_writes_reach_the_host(sandbox: LocalSandbox, workdir: Path) -> None:
    name = f"sandbox-marker-{uuid.uuid4().hex}"
    code = f"""
        open("/tmp/{name}", "w").write("tmp")
        open("/work/{name}", "w").write("work")
        open("{name}.rel", "w").write("cwd")
    """
    result, _ = run_python(sandbox, workdir, code)
    assert result.exit_code == 0, result.log
    assert not (Path("/tmp") / name).exists()
    assert (workdir / name).read_text() == "work"
    assert (workdir / f"{name}.rel").read_text() == "cwd"


@sandboxed
def test_network_is_unreachable(sandbox: LocalSandbox, workdir: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        code = """
            import json, socket, sys
            outcome = {}
            def attempt(name, action):
                try:
                    action()
                    outcome[name] = "ok"
                except OSError as error:
                    outcome[name] = type(error).__name__
            attempt("host loopback", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3))
            attempt("dns", lambda: socket.getaddrinfo("example.com", 443))
            attempt("internet", lambda: socket.create_connection(("1.1.1.1", 53), timeout=3))
            print(json.dumps(outcome))
        """
        outcome = inside(sandbox, workdir, code, str(port))
        with pytest.raises(BlockingIOError):
            server.accept()
    assert "ok" not in outcome.values(), outcome


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp filter exists for x86_64 only")
@sandboxed
def test_seccomp_denies_kernel_interfaces(sandbox: LocalSandbox, workdir: Path) -> None:
    # Arguments are invalid on purpose: without the filter each call fails with EINVAL or EFAULT instead.
    code = """
        import ctypes, errno, json
        libc = ctypes.CDLL(None, use_errno=True)
        calls = {"io_uring_setup": (425, 0, 0), "userfaultfd": (323, 0xFFFF), "bpf": (321, 999, 0, 0),
                 "perf_event_open": (298, 0, 0, 0, 0, 0), "keyctl": (250, 9999), "unshare": (272, 0x10000000)}
        out = {}
        for name, (number, *args) in calls.items():
            libc.syscall(number, *args)
            out[name] = errno.errorcode.get(ctypes.get_errno())
        print(json.dumps(out))
    """
    denied = inside(sandbox, workdir, code)
    assert set(denied.values()) == {"EPERM"}, denied


# ---------------------------------------------------------------------------------------------------------
# Limits


@sandboxed
def test_infinite_loop_is_killed_at_the_wall_clock_limit(sandbox: LocalSandbox, workdir: Path) -> None:
    result, _ = run_python(sandbox, workdir, "while True: pass", wall_seconds=2)
    assert result.timed_out
    assert result.wall_seconds < 2 + 3
    assert result.describe() == "exceeded the 2 s time limit"


@sandboxed
def test_cpu_time_limit_kills_a_busy_process(sandbox: LocalSandbox, workdir: Path) -> None:
    result, _ = run_python(sandbox, workdir, "while True: pass", cpu_seconds=1, wall_seconds=20)
    assert not result.timed_out
    assert result.signal == signal.SIGXCPU
    assert result.describe() == "exceeded the 1 s CPU time limit"


TREE = """
    import os, subprocess, sys, time
    marker = sys.argv[1]
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)", marker]
    if os.fork() == 0:
        if os.fork() == 0:
            os.setsid()
            os.execv(sys.executable, sleeper)
        os._exit(0)
    os.wait()
    subprocess.Popen(sleeper, start_new_session=True)
    print("ready", flush=True)
    if sys.argv[2] == "stay":
        time.sleep(600)
"""


@pytest.fixture(params=[True, False], ids=["cgroups", "rlimits-only"])
def box(request: pytest.FixtureRequest, sandbox: LocalSandbox, scratch: Path) -> tuple[LocalSandbox, Path]:
    """The sandbox with its cgroups, then one with rlimits alone (what a host without writable cgroups gets)."""
    chosen = sandbox
    if not request.param:
        if os.geteuid() != 0:
            pytest.skip("RLIMIT_NPROC would count every process of the current user")
        # A uid of its own: RLIMIT_NPROC counts all processes of the uid, other tests' sandboxes included.
        chosen = LocalSandbox(uid=61_000 + os.getpid() % 1000, gid=61_000, cgroups=False)
    workdir = scratch / "box"
    chosen.prepare_workdir(workdir)
    return chosen, workdir


@sandboxed
def test_kill_ends_the_whole_process_tree(box: tuple[LocalSandbox, Path]) -> None:
    sandbox, workdir = box
    marker = f"tree-{uuid.uuid4().hex}"
    with sandbox.run(
        SandboxSpec(["python", "-c", textwrap.dedent(TREE), marker, "stay"], workdir)
    ) as session:
        assert session.stdout.readline() == b"ready\n"
        assert len(processes_with(marker)) >= 3
        session.kill()
        result = session.wait(10)
        session.kill()  # idempotent, even after the pid is gone
    assert wait_until_gone(marker) == []
    assert result.describe() == "killed by signal SIGKILL"


@sandboxed
def test_kill_right_after_start_ends_the_tree(box: tuple[LocalSandbox, Path]) -> None:
    sandbox, workdir = box
    marker = f"tree-{uuid.uuid4().hex}"
    with sandbox.run(
        SandboxSpec(["python", "-c", textwrap.dedent(TREE), marker, "stay"], workdir)
    ) as session:
        session.kill()
        session.wait(10)
    assert wait_until_gone(marker) == []


@sandboxed
def test_background_processes_end_with_the_main_process(box: tuple[LocalSandbox, Path]) -> None:
    sandbox, workdir = box
    marker = f"tree-{uuid.uuid4().hex}"
    result, output = run_python(sandbox, workdir, TREE, marker, "leave")
    assert output == b"ready\n"
    assert result.exit_code == 0
    assert wait_until_gone(marker, seconds=0.5) == []


@sandboxed
def test_a_dead_workers_sandbox_is_ended_by_the_next_worker(sandbox: LocalSandbox, workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("without cgroups nothing can find a dead worker's sandbox")
    token = uuid.uuid4().hex
    worker = f"""
        import sys, time
        from pathlib import Path
        from worker.sandbox import LocalSandbox, SandboxSpec
        sleeper = ["python", "-c", "import time; time.sleep(600)", "tree-" + sys.argv[1]]
        session = LocalSandbox().run(SandboxSpec(sleeper, Path({str(workdir)!r})))
        print("started", flush=True)
        time.sleep(600)
    """
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(worker), token], cwd=REPO, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"started\n"
    process.kill()  # bwrap --die-with-parent usually ends the sandbox now; right after start it may not
    process.wait()
    process.stdout.close()
    result, _ = run_python(LocalSandbox(), workdir, "pass")  # a new worker sweeps what the dead one left
    assert result.exit_code == 0
    assert wait_until_gone(f"tree-{token}", seconds=0.5) == []
    assert [
        p for p in Path("/sys/fs/cgroup").glob(f"**/autograder-sandbox-*-{process.pid}-*") if p.is_dir()
    ] == []


FORK_BOMB = """
    import os, time
    started = 0
    for _ in range(500):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        started += 1
    print(started, flush=True)
"""


@sandboxed
def test_fork_bomb_stops_at_max_processes(box: tuple[LocalSandbox, Path]) -> None:
    sandbox, workdir = box
    result, output = run_python(sandbox, workdir, FORK_BOMB, max_processes=20, wall_seconds=30)
    assert result.exit_code == 0, result.log
    assert 5 <= int(output) < 20


@sandboxed
def test_memory_hog_is_stopped(sandbox: LocalSandbox, workdir: Path) -> None:
    code = """
        chunks = []
        for _ in range(48):  # 3 GiB, touched page by page
            chunks.append(b"x" * (64 << 20))
    """
    result, _ = run_python(sandbox, workdir, code, memory_bytes=512 << 20, wall_seconds=30)
    assert result.exit_code != 0
    assert result.oom_killed or b"MemoryError" in result.log
    assert "out of memory" in result.describe()
    assert "512.0 MiB" in result.describe()


@sandboxed
def test_single_huge_allocation_raises_memory_error(sandbox: LocalSandbox, workdir: Path) -> None:
    result, _ = run_python(sandbox, workdir, "bytearray(6 << 30)", memory_bytes=512 << 20)
    assert result.exit_code == 1
    assert b"MemoryError" in result.log
    assert (
        result.describe() == "exited with code 1 after running out of memory (MemoryError; limit 512.0 MiB)"
    )


@sandboxed
def test_large_file_write_fails(sandbox: LocalSandbox, workdir: Path) -> None:
    code = """
        import errno
        with open("big", "wb") as handle:
            try:
                for _ in range(100):
                    handle.write(b"x" * (1 << 20))
                    handle.flush()
            except OSError as error:
                print(errno.errorcode[error.errno])
    """
    result, output = run_python(sandbox, workdir, code, max_file_bytes=1 << 20)
    assert output == b"EFBIG\n" or result.signal == signal.SIGXFSZ
    assert (workdir / "big").stat().st_size <= 1 << 20


@sandboxed
def test_tmp_size_is_limited(sandbox: LocalSandbox, workdir: Path) -> None:
    code = """
        import errno
        try:
            with open("/tmp/fill", "wb") as handle:
                for _ in range(64):
                    handle.write(b"x" * (1 << 20))
                    handle.flush()
        except OSError as error:
            print(errno.errorcode[error.errno])
    """
    result, output = run_python(sandbox, workdir, code, tmp_bytes=8 << 20)
    assert output == b"ENOSPC\n", result.log


@sandboxed
def test_flood_of_stderr_is_capped_and_does_not_block(sandbox: LocalSandbox, workdir: Path) -> None:
    code = """
        import sys
        sys.stderr.write("FIRST")
        for _ in range(160):
            sys.stderr.write("e" * 65536)
        sys.stderr.write("LAST")
    """
    result, _ = run_python(sandbox, workdir, code, log_bytes=64 << 10, wall_seconds=30)
    assert result.exit_code == 0
    assert result.log_truncated
    assert len(result.log) <= 64 << 10
    assert result.log.startswith(b"FIRST") and result.log.endswith(b"LAST")
    assert b"bytes of output omitted" in result.log


@pytest.mark.parametrize(
    ("code", "exit_code", "signum", "description"),
    [
        ("pass", 0, None, "exited normally (code 0)"),
        ("import sys; sys.exit(3)", 3, None, "exited with code 3"),
        ("raise ValueError('boom')", 1, None, "exited with code 1"),
        ("import os; os.kill(os.getpid(), 11)", None, signal.SIGSEGV, "killed by signal SIGSEGV"),
        ("import os; os.abort()", None, signal.SIGABRT, "killed by signal SIGABRT (aborted)"),
    ],
)
@sandboxed
def test_exit_codes_and_signals_are_reported(
    sandbox: LocalSandbox,
    workdir: Path,
    code: str,
    exit_code: int | None,
    signum: int | None,
    description: str,
) -> None:
    result, _ = run_python(sandbox, workdir, code)
    assert (result.exit_code, result.signal) == (exit_code, signum)
    assert result.describe().startswith(description)
    assert not result.timed_out and not result.oom_killed


@sandboxed
def test_resource_usage_is_measured(sandbox: LocalSandbox, workdir: Path) -> None:
    result, _ = run_python(sandbox, workdir, "x = b'x' * (200 << 20); sum(range(3_000_000))")
    if result.cpu_seconds is None or result.max_rss_bytes is None:
        pytest.skip("no cgroup to measure with on this machine")
    assert result.max_rss_bytes >= 200 << 20
    assert result.cpu_seconds > 0


# ---------------------------------------------------------------------------------------------------------
# The session and the backend


@sandboxed
def test_wait_with_timeout_raises_and_leaves_the_process_running(
    sandbox: LocalSandbox, workdir: Path
) -> None:
    with sandbox.run(SandboxSpec(["python", "-c", "import time; time.sleep(600)"], workdir)) as session:
        with pytest.raises(TimeoutError):
            session.wait(0.3)
        os.kill(session.pid, 0)  # still there
    assert session.wait(0).signal == signal.SIGKILL


@sandboxed
def test_gpu_run_without_a_gpu_is_a_clear_error(sandbox: LocalSandbox, workdir: Path) -> None:
    if any(Path("/dev").glob("nvidia*")) or Path("/dev/kfd").exists():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SandboxError, match="no /dev/nvidia"):
        sandbox.run(SandboxSpec(["python", "-c", "pass"], workdir, gpu=True))


@sandboxed
def test_missing_workdir_is_a_clear_error(sandbox: LocalSandbox, scratch: Path) -> None:
    with pytest.raises(SandboxError, match="does not exist"):
        sandbox.run(SandboxSpec(["python", "-c", "pass"], scratch / "missing"))


@sandboxed
def test_workdir_under_a_closed_directory_is_refused(sandbox: LocalSandbox, scratch: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox runs as the current user, who owns the closed directory")
    closed = scratch / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(SandboxError, match=str(closed)):
        sandbox.prepare_workdir(closed / "work")


@sandboxed
def test_check_refuses_a_runtime_the_sandbox_uid_cannot_read(scratch: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox runs as the current user, who can read everything it creates")
    runtime = scratch / "closed" / "runtime"
    (runtime / "bin").mkdir(parents=True)
    (runtime / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    (scratch / "closed").chmod(0o700)
    with pytest.raises(SandboxError, match="not readable by uid 65534"):
        LocalSandbox(python_prefix=runtime).check()


@sandboxed
def test_check_refuses_a_runtime_that_contains_the_graders(scratch: Path) -> None:
    runtime = scratch / "runtime"
    site_packages = (
        runtime / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )
    (site_packages / "graders").mkdir(parents=True)
    (site_packages / "graders" / "__init__.py").write_text("HIDDEN = 1\n")
    (runtime / "bin").mkdir()
    (runtime / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    (runtime / "pyvenv.cfg").write_text(f"home = {Path(os.path.realpath(sys.executable)).parent}\n")
    with pytest.raises(SandboxError, match="hidden tests"):
        LocalSandbox(python_prefix=runtime).check()


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(SandboxError, match="local"):
        get_sandbox("nope")


def test_local_backend_by_name() -> None:
    assert isinstance(get_sandbox("local"), LocalSandbox)


def test_ro_bind_onto_the_workdir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        SandboxSpec(["python"], tmp_path, ro_binds={tmp_path: "/work/runner"})


# ---------------------------------------------------------------------------------------------------------
# cgroup discovery (from the text of /proc files; no sandbox needed)

HYBRID_CGROUP = "4:memory:/job/42\n8:pids:/\n2:cpuacct:/\n0::/\n"
HYBRID_MOUNTINFO = """\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw
"""


def test_discover_cgroups_mixes_v1_controllers_with_a_thin_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
    found = discover_cgroups(HYBRID_CGROUP, HYBRID_MOUNTINFO.format(unified=tmp_path))
    assert {name: (h.version, str(h.parent)) for name, h in found.items()} == {
        "memory": (1, "/sys/fs/cgroup/memory/job/42"),
        "pids": (1, "/sys/fs/cgroup/pids"),
        "cpuacct": (2, str(tmp_path)),
    }


def test_discover_cgroups_prefers_v2_below_the_mount_root(tmp_path: Path) -> None:
    own = tmp_path / "worker.service"
    own.mkdir()
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    mountinfo = f"30 23 0:26 /system.slice {tmp_path} rw - cgroup2 cgroup2 rw\n"
    found = discover_cgroups("0::/system.slice/worker.service\n", mountinfo)
    assert {name: (h.version, h.parent) for name, h in found.items()} == dict.fromkeys(
        ["memory", "pids", "cpuacct"], (2, own)
    )


def test_a_venv_runtime_is_bound_at_a_fixed_path_wherever_it_lives(tmp_path: Path) -> None:
    venv = tmp_path / "checkout" / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    runtime = locate_runtime(venv)
    assert runtime.interpreter == f"{RELOCATED_RUNTIME}/bin/python"
    assert (venv.resolve(), RELOCATED_RUNTIME) in runtime.binds
    assert all(str(tmp_path) not in inside for _, inside in runtime.binds)
