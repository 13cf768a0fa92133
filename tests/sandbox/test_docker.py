"""The docker sandbox backend: its container options as a pure function, then real runs against podman.

The runs use podman's Docker-compatible API (scripts/ensure-podman.sh) and an image built here from nothing
(tests/sandbox/docker_helpers.py): plain Python programs, the host's /usr bound read-only as the runtime.
GPU requests are checked on the options alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

pytest.importorskip("docker.types", reason="the docker Python package is not installed: pip install docker")

from docker.types import DeviceRequest

from tests.sandbox import docker_helpers
from worker.sandbox import Limits, SandboxError, SandboxResult, SandboxSpec, get_sandbox
from worker.sandbox.docker import (
    DEADLINE_LABEL,
    LABEL,
    WORKER_LABEL,
    DockerSandbox,
    container_options,
    parse_user,
)

sandboxed = pytest.mark.sandbox

# ---------------------------------------------------------------------------------------------------------
# The options, without a daemon


def options_for(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    gpu = kwargs.pop("gpu", False)
    spec = SandboxSpec(
        ["python", "-I", "/runner/runner.py"],
        tmp_path,
        ro_binds={tmp_path / "runner": "/runner"},
        env={"GRADER_MODE": "x"},
        limits=Limits(memory_bytes=2 * 2**30, max_processes=32, tmp_bytes=64 * 2**20, cpu_seconds=10),
        gpu=gpu,
    )
    return container_options(spec, image="sandbox:1", **kwargs)


def test_options_isolate_the_container(tmp_path: Path) -> None:
    options = options_for(tmp_path)
    assert options["network_mode"] == "none"
    assert options["read_only"] is True
    assert options["cap_drop"] == ["ALL"]
    assert options["security_opt"] == ["no-new-privileges"]  # and so the daemon's default seccomp profile
    assert options["user"] == "65534:65534"
    assert options["init"] is True
    assert options["stdin_open"] is True
    assert options["working_dir"] == "/work"
    assert "privileged" not in options and "cap_add" not in options and "auto_remove" not in options
    assert options["log_config"]["Type"] == "none"
    assert options["labels"][LABEL] == "1"


def test_options_limit_resources(tmp_path: Path) -> None:
    options = options_for(tmp_path, cpus=2)
    assert options["mem_limit"] == options["memswap_limit"] == 2 * 2**30
    assert options["pids_limit"] == 33  # the code's 32 and the init
    assert options["nano_cpus"] == 2_000_000_000
    assert options["shm_size"] == 64 * 2**20
    assert "size=67108864" in options["tmpfs"]["/tmp"]
    ulimits = {ulimit["Name"]: (ulimit["Soft"], ulimit["Hard"]) for ulimit in options["ulimits"]}
    assert ulimits["cpu"] == (10, 11)
    assert ulimits["core"] == (0, 0)
    assert ulimits["nofile"] == (256, 256)
    assert ulimits["fsize"] == (64 * 2**20, 64 * 2**20)


def test_options_bind_the_workdir_rw_and_everything_else_ro(tmp_path: Path) -> None:
    options = options_for(tmp_path, runtime_binds={Path("/opt/runtime"): "/opt/runtime"})
    binds = {mount["Target"]: (mount["Source"], mount["ReadOnly"]) for mount in options["mounts"]}
    assert binds == {
        "/work": (str(tmp_path), False),
        "/runner": (str(tmp_path / "runner"), True),
        "/opt/runtime": ("/opt/runtime", True),
    }
    assert all(mount["Type"] == "bind" for mount in options["mounts"])


def test_options_environment_is_minimal_and_python_is_the_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGRADER_SECRET_KEY", "do-not-leak")
    options = options_for(tmp_path, python="/usr/local/bin/python3")
    environment = options["environment"]
    assert options["command"][0] == "/usr/local/bin/python3"
    assert environment["GRADER_MODE"] == "x"
    assert environment["HOME"] == "/tmp"
    assert environment["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert "AUTOGRADER_SECRET_KEY" not in environment
    assert not {"CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"} & environment.keys()
    assert "device_requests" not in options and "devices" not in options


def test_options_runtime_selects_gvisor(tmp_path: Path) -> None:
    assert options_for(tmp_path, runtime="runsc")["runtime"] == "runsc"
    assert "runtime" not in options_for(tmp_path)


def test_nvidia_gpu_is_requested_by_index_and_pinned(tmp_path: Path) -> None:
    options = options_for(tmp_path, gpu=True, gpu_vendor="nvidia", gpu_index=3)
    assert options["device_requests"] == [DeviceRequest(device_ids=["3"], capabilities=[["gpu"]])]
    assert options["device_requests"][0]["Count"] == 0  # exactly the device named, not "all"
    assert options["environment"]["CUDA_VISIBLE_DEVICES"] == "0"  # the only GPU inside
    assert "compute" in options["environment"]["NVIDIA_DRIVER_CAPABILITIES"]
    assert "devices" not in options


def test_amd_gpu_passes_kfd_and_one_render_node(tmp_path: Path) -> None:
    options = options_for(tmp_path, gpu=True, gpu_vendor="amd", gpu_index=2, gpu_groups=[44, 109])
    assert options["devices"] == ["/dev/kfd:/dev/kfd:rwm", "/dev/dri/renderD130:/dev/dri/renderD130:rwm"]
    assert options["group_add"] == ["44", "109"]
    assert options["environment"]["HIP_VISIBLE_DEVICES"] == "0"
    assert "device_requests" not in options


def test_amd_gpu_groups_default_to_names(tmp_path: Path) -> None:
    assert options_for(tmp_path, gpu=True, gpu_vendor="amd")["group_add"] == ["video", "render"]


def test_gpu_run_without_a_configured_gpu_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="no GPU"):
        options_for(tmp_path, gpu=True)


def test_gpu_settings_do_nothing_for_a_cpu_run(tmp_path: Path) -> None:
    options = options_for(tmp_path, gpu_vendor="nvidia", gpu_index=1)
    assert "device_requests" not in options
    assert "CUDA_VISIBLE_DEVICES" not in options["environment"]


def test_user_must_be_numeric() -> None:
    assert parse_user("65534:65534") == (65534, 65534)
    with pytest.raises(ValueError, match="numeric"):
        parse_user("nobody")
    with pytest.raises(ValueError, match="numeric"):
        DockerSandbox("sandbox:1", user="nobody:nogroup")


def test_runtime_binds_may_not_cover_the_workdir() -> None:
    with pytest.raises(ValueError, match="reserved"):
        DockerSandbox("sandbox:1", runtime_binds={Path("/opt"): "/work/opt"})


def test_docker_backend_by_name_connects_lazily() -> None:
    sandbox = get_sandbox("docker", image="sandbox:1", base_url="unix:///nonexistent.sock")
    assert isinstance(sandbox, DockerSandbox)
    with pytest.raises(SandboxError, match="nonexistent"):
        sandbox.check()


# ---------------------------------------------------------------------------------------------------------
# Real runs


@pytest.fixture(scope="module")
def docker_sandbox() -> DockerSandbox:
    client, reason = docker_helpers.daemon()
    if client is None:
        pytest.skip(reason or "no daemon")
    if not docker_helpers.host_runtime_is_merged_usr():
        pytest.skip("the test image borrows the host's /usr as its runtime, which needs a merged-/usr host")
    image = docker_helpers.ensure_test_image(client)
    sandbox = DockerSandbox(
        image,
        base_url=docker_helpers.docker_host(),
        runtime_binds=docker_helpers.RUNTIME_BINDS,
        python=docker_helpers.HOST_PYTHON,
    )
    sandbox.check()
    return sandbox


@pytest.fixture
def workdir(docker_sandbox: DockerSandbox, scratch: Path) -> Path:
    path = scratch / "work"
    docker_sandbox.prepare_workdir(path)
    return path


def run_python(
    sandbox: DockerSandbox,
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


def inside(sandbox: DockerSandbox, workdir: Path, code: str, *args: str, **limits: Any) -> Any:
    """Run `code`, which prints one JSON value as its last line, and return that value."""
    result, output = run_python(sandbox, workdir, code, *args, **limits)
    assert result.exit_code == 0, result.log.decode(errors="replace")
    return json.loads(output.decode().strip().splitlines()[-1])


def sandbox_containers(sandbox: DockerSandbox) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = sandbox.client.api.containers(
        all=True, filters={"label": f"{LABEL}=1"}
    )
    return containers


@pytest.fixture
def no_leftovers(docker_sandbox: DockerSandbox) -> Iterator[None]:
    before = {container["Id"] for container in sandbox_containers(docker_sandbox)}
    yield
    after = {container["Id"] for container in sandbox_containers(docker_sandbox)}
    assert after - before == set(), "a sandbox container was left behind"


@sandboxed
def test_stdin_and_stdout_carry_megabytes_of_binary_both_ways(
    docker_sandbox: DockerSandbox, workdir: Path, no_leftovers: None
) -> None:
    payload = os.urandom(3 * 2**20)
    code = "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1])"
    result, output = run_python(docker_sandbox, workdir, code, stdin=payload)
    assert result.exit_code == 0, result.log
    assert output == payload[::-1]


@sandboxed
def test_conversation_goes_back_and_forth(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    code = """
        import sys
        for line in sys.stdin.buffer:
            sys.stdout.buffer.write(line.upper())
            sys.stdout.flush()
    """
    spec = SandboxSpec(["python", "-c", textwrap.dedent(code)], workdir)
    with docker_sandbox.run(spec) as session:
        for word in (b"ping\n", b"\x00\xffbinary\n", b"last\n"):
            session.stdin.write(word)
            assert session.stdout.readline() == word.upper()
        session.stdin.close()
        assert session.stdout.read() == b""
        result = session.wait(30)
    assert result.exit_code == 0


@sandboxed
def test_output_waits_for_a_late_reader(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    spec = SandboxSpec(["python", "-c", "import sys; sys.stdout.buffer.write(b'y' * 300_000)"], workdir)
    with docker_sandbox.run(spec) as session:
        time.sleep(1)  # the code has written everything it can by now
        assert session.stdout.read() == b"y" * 300_000
        assert session.wait(30).exit_code == 0


@sandboxed
def test_code_blocked_on_unread_stdout_is_still_ended(
    docker_sandbox: DockerSandbox, workdir: Path, no_leftovers: None
) -> None:
    code = "import sys; sys.stdout.buffer.write(b'y' * 20_000_000)"
    spec = SandboxSpec(["python", "-c", code], workdir, limits=Limits(wall_seconds=2))
    with docker_sandbox.run(spec) as session:
        result = session.wait(20)  # nobody reads: the code blocks like on a full pipe, until the clock
    assert result.timed_out


@sandboxed
def test_environment_is_minimal_and_spec_env_is_added(
    docker_sandbox: DockerSandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGRADER_SECRET_KEY", "do-not-leak")
    spec = SandboxSpec(
        ["python", "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        workdir,
        env={"GRADER_MODE": "x"},
    )
    with docker_sandbox.run(spec) as session:
        env = json.loads(session.stdout.read())
        session.wait(30)
    assert "AUTOGRADER_SECRET_KEY" not in env
    assert not any("do-not-leak" in value for value in env.values())
    assert env["GRADER_MODE"] == "x"
    assert env["HOME"] == "/tmp"


@sandboxed
def test_code_runs_without_privileges(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    code = """
        import json
        status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
        keys = ["Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp"]
        print(json.dumps({key: status[key].split()[0] for key in keys}))
    """
    status = inside(docker_sandbox, workdir, code)
    assert status["Uid"] == status["Gid"] == "65534"
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # the daemon's default profile


@sandboxed
def test_root_is_read_only_and_only_the_workdir_reaches_the_host(
    docker_sandbox: DockerSandbox, workdir: Path, scratch: Path
) -> None:
    runner = scratch / "runner"
    runner.mkdir(mode=0o755)
    (runner / "stub.py").write_text("original")
    (runner / "stub.py").chmod(0o644)
    code = """
        import json, os
        written = {}
        for path in ["/evil", "/usr/evil", "/etc/evil", "/dev/evil", "/sys/evil", "/runner/evil",
                     "/runner/stub.py", "/work/result", "/tmp/scratch", "/dev/shm/scratch"]:
            try:
                with open(path, "w") as handle:
                    handle.write("x")
                written[path] = True
            except OSError:
                written[path] = False
        print(json.dumps(written))
    """
    spec = SandboxSpec(["python", "-c", textwrap.dedent(code)], workdir, ro_binds={runner: "/runner"})
    with docker_sandbox.run(spec) as session:
        written = json.loads(session.stdout.read())
        session.wait(30)
    allowed = {"/work/result", "/tmp/scratch", "/dev/shm/scratch"}
    assert {path for path, ok in written.items() if ok} == allowed
    assert (workdir / "result").read_text() == "x"
    assert (runner / "stub.py").read_text() == "original"
    assert sorted(path.name for path in runner.iterdir()) == ["stub.py"]


@sandboxed
def test_network_is_unreachable(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))  # noqa: S104 - loopback and this machine's own address, nothing else
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        addresses = ["127.0.0.1", *_own_addresses()]
        code = """
            import json, socket, sys
            outcome = {"interfaces": [name for _, name in socket.if_nameindex()]}
            for address in sys.argv[2:]:
                try:
                    socket.create_connection((address, int(sys.argv[1])), timeout=3).close()
                    outcome[address] = "connected"
                except OSError as error:
                    outcome[address] = type(error).__name__
            try:
                socket.getaddrinfo("localhost.invalid", 443)
                outcome["dns"] = "resolved"
            except OSError as error:
                outcome["dns"] = type(error).__name__
            print(json.dumps(outcome))
        """
        outcome = inside(docker_sandbox, workdir, code, str(port), *addresses)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert outcome.pop("interfaces") == ["lo"]
    assert "connected" not in outcome.values() and "resolved" not in outcome.values(), outcome


def _own_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (the host as the container would see it)."""
    completed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
    return [address for address in completed.stdout.split() if "." in address][:2]


@sandboxed
def test_infinite_loop_is_killed_at_the_wall_clock_limit(
    docker_sandbox: DockerSandbox, workdir: Path, no_leftovers: None
) -> None:
    result, _ = run_python(docker_sandbox, workdir, "while True: pass", wall_seconds=2)
    assert result.timed_out
    assert result.wall_seconds < 2 + 3
    assert result.describe() == "exceeded the 2 s time limit"


@sandboxed
def test_cpu_time_limit_kills_a_busy_process(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    result, _ = run_python(docker_sandbox, workdir, "while True: pass", cpu_seconds=1, wall_seconds=20)
    assert not result.timed_out
    assert result.signal == signal.SIGXCPU
    assert result.describe() == "exceeded the 1 s CPU time limit"


@sandboxed
def test_memory_hog_is_oom_killed(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    code = """
        chunks = []
        for _ in range(16):  # 1 GiB, touched page by page
            chunks.append(b"x" * (64 << 20))
    """
    result, _ = run_python(docker_sandbox, workdir, code, memory_bytes=256 << 20, wall_seconds=30)
    assert result.oom_killed, (result, result.log)
    assert result.describe() == "killed: out of memory (limit 256.0 MiB)"


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
def test_fork_bomb_stops_at_max_processes(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    result, output = run_python(docker_sandbox, workdir, FORK_BOMB, max_processes=20, wall_seconds=30)
    assert result.exit_code == 0, result.log
    assert 5 <= int(output) < 20


@sandboxed
def test_large_file_write_fails(docker_sandbox: DockerSandbox, workdir: Path) -> None:
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
    result, output = run_python(docker_sandbox, workdir, code, max_file_bytes=1 << 20)
    assert output == b"EFBIG\n" or result.signal == signal.SIGXFSZ
    assert (workdir / "big").stat().st_size <= 1 << 20


@sandboxed
def test_tmp_size_is_limited(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    code = """
        import errno
        for path in ["/tmp/fill", "/dev/shm/fill"]:
            try:
                with open(path, "wb") as handle:
                    for _ in range(64):
                        handle.write(b"x" * (1 << 20))
                        handle.flush()
            except OSError as error:
                print(errno.errorcode[error.errno])
    """
    result, output = run_python(docker_sandbox, workdir, code, tmp_bytes=8 << 20)
    assert output == b"ENOSPC\nENOSPC\n", result.log


@sandboxed
def test_flood_of_stderr_is_capped_and_does_not_block(docker_sandbox: DockerSandbox, workdir: Path) -> None:
    code = """
        import sys
        sys.stderr.write("FIRST")
        for _ in range(160):
            sys.stderr.write("e" * 65536)
        sys.stderr.write("LAST")
        sys.stderr.flush()
        print("done")
    """
    result, output = run_python(docker_sandbox, workdir, code, log_bytes=64 << 10, wall_seconds=30)
    assert result.exit_code == 0
    assert output == b"done\n"
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
    docker_sandbox: DockerSandbox,
    workdir: Path,
    code: str,
    exit_code: int | None,
    signum: int | None,
    description: str,
) -> None:
    result, _ = run_python(docker_sandbox, workdir, code)
    assert (result.exit_code, result.signal) == (exit_code, signum)
    assert result.describe().startswith(description)
    assert not result.timed_out and not result.oom_killed
    if code.startswith("raise"):
        assert b"ValueError: boom" in result.log


@sandboxed
def test_kill_ends_the_run_and_removes_the_container(
    docker_sandbox: DockerSandbox, workdir: Path, no_leftovers: None
) -> None:
    code = """
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("ready", flush=True)
        time.sleep(600)
    """
    with docker_sandbox.run(SandboxSpec(["python", "-c", textwrap.dedent(code)], workdir)) as session:
        assert session.stdout.readline() == b"ready\n"
        session.kill()
        result = session.wait(20)
        session.kill()  # idempotent, even after the container is gone
    assert result.describe() == "killed by signal SIGKILL"
    assert not result.oom_killed and not result.timed_out


@sandboxed
def test_wait_with_timeout_raises_and_leaves_the_container_running(
    docker_sandbox: DockerSandbox, workdir: Path, no_leftovers: None
) -> None:
    spec = SandboxSpec(["python", "-c", "import time; time.sleep(600)"], workdir)
    with docker_sandbox.run(spec) as session:
        with pytest.raises(TimeoutError):
            session.wait(0.3)
        state = docker_sandbox.client.api.inspect_container(session.container_id)["State"]
        assert state["Running"]
    assert session.wait(0).signal == signal.SIGKILL


@sandboxed
def test_containers_of_a_dead_worker_are_removed(docker_sandbox: DockerSandbox) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    labels = {
        LABEL: "1",
        WORKER_LABEL: f"{namespace}-{dead.pid}-1",
        DEADLINE_LABEL: f"{time.time() + 600:.0f}",
    }
    overdue = {LABEL: "1", WORKER_LABEL: "elsewhere", DEADLINE_LABEL: f"{time.time() - 3600:.0f}"}
    alive = {LABEL: "1", WORKER_LABEL: "elsewhere", DEADLINE_LABEL: f"{time.time() + 600:.0f}"}
    created = {
        name: docker_sandbox.client.containers.create(
            docker_sandbox.image, ["/usr/bin/true"], labels=label_set
        ).id
        for name, label_set in (("dead", labels), ("overdue", overdue), ("alive", alive))
    }
    try:
        docker_sandbox.remove_orphans()
        remaining = {container["Id"] for container in sandbox_containers(docker_sandbox)}
        assert created["dead"] not in remaining
        assert created["overdue"] not in remaining
        assert created["alive"] in remaining
    finally:
        docker_sandbox.client.api.remove_container(created["alive"], force=True)


@sandboxed
def test_missing_image_is_a_clear_error(docker_sandbox: DockerSandbox) -> None:
    sandbox = DockerSandbox("localhost/no-such-sandbox-image:1", base_url=docker_helpers.docker_host())
    with pytest.raises(SandboxError, match="not on the Docker host"):
        sandbox.check()


@sandboxed
def test_missing_workdir_is_a_clear_error(docker_sandbox: DockerSandbox, scratch: Path) -> None:
    with pytest.raises(SandboxError, match="does not exist"):
        docker_sandbox.run(SandboxSpec(["python", "-c", "pass"], scratch / "missing"))


@sandboxed
def test_check_refuses_an_image_that_contains_the_graders(
    docker_sandbox: DockerSandbox, scratch: Path
) -> None:
    leak = scratch / "leak"
    (leak / "graders").mkdir(parents=True)
    (leak / "graders" / "__init__.py").write_text("HIDDEN = 1\n")
    # An interpreter that can import the graders, as a runtime with this project installed could.
    (leak / "python").write_text(f'#!/bin/sh\nPYTHONPATH=/opt/leak exec {docker_helpers.HOST_PYTHON} "$@"\n')
    for path in (leak, leak / "graders"):
        path.chmod(0o755)
    (leak / "graders" / "__init__.py").chmod(0o644)
    (leak / "python").chmod(0o755)
    leaky = DockerSandbox(
        docker_sandbox.image,
        base_url=docker_helpers.docker_host(),
        runtime_binds={**docker_helpers.RUNTIME_BINDS, leak: "/opt/leak"},
        python="/opt/leak/python",
    )
    with pytest.raises(SandboxError, match="hidden tests"):
        leaky.check()
