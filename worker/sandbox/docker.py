"""The `docker` sandbox backend: one throwaway container per run, through the Docker Engine API.

Each run gets a container with no network, a read-only root, private sized tmpfs mounts for /tmp and /dev/shm,
no capabilities, `no-new-privileges`, the daemon's default seccomp profile, a non-root user, memory (no swap),
pids, CPU and rlimit caps, and an init process as pid 1. The workdir is bind-mounted read-write at /work; the
spec's and the backend's extra binds are read-only. The grader's protocol travels over one attach connection:
a thread copies a stdin pipe into it, another splits the multiplexed output into a stdout pipe (for the
grader) and a capped stderr log. A watchdog kills the container at the wall-clock limit; afterwards the
container's state is read and the container removed. docs/deploy.md describes the backend and its gaps.

The daemon resolves bind-mount sources on its own host: the worker must see the workdir at the same path as
the daemon (a worker in a container mounts its scratch directory at the same path as on the host).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

from docker.client import DockerClient, from_env
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from worker.sandbox.base import (
    WORKDIR_INSIDE,
    Limits,
    Sandbox,
    SandboxError,
    SandboxResult,
    SandboxSession,
    SandboxSpec,
)
from worker.sandbox.local import (
    _CHECK_RUNTIME_SCRIPT,
    SANDBOX_TMP,
    TRUSTED_PACKAGES,
    CappedLog,
    _process_identity,
    sandbox_environment,
)

logger = logging.getLogger(__name__)

GpuVendor = Literal["nvidia", "amd"]

SANDBOX_USER = "65534:65534"
# Every sandbox container carries LABEL=1; the others say who started it and when it must be over, so that
# containers nobody will collect (their worker died) can be found and removed.
LABEL = "org.autograder.sandbox"
WORKER_LABEL = "org.autograder.sandbox.worker"
DEADLINE_LABEL = "org.autograder.sandbox.deadline"
# A container still there this long after its wall-clock deadline has no live worker watching it.
ORPHAN_GRACE_SECONDS = 300.0
# The container's init (Docker's --init: docker-init or catatonit) shares the pids limit with the code.
INIT_PROCESSES = 1
# RLIMIT_NPROC counts the processes of the sandbox uid across the whole host, so it is only a generous
# backstop (pids_limit is the real limit). It must be set: podman running as root otherwise asks for 1048576,
# which fails on hosts whose own hard limit is lower.
USER_PROCESS_LIMIT = 4096
CPU_KILL_GRACE_SECONDS = 1
# After the container ends: how long the output may take to arrive, and how long removal may take.
TEARDOWN_SECONDS = 5.0
CHECK_SECONDS = 60.0
API_TIMEOUT_SECONDS = 120
# AMD device nodes belong to these groups on the host; names are resolved in the image's /etc/group.
AMD_GPU_GROUPS = ("video", "render")
AMD_RENDER_NODE_BASE = 128  # /dev/dri/renderD128 is the first GPU
_FRAME_HEADER = struct.Struct(">BxxxL")  # the attach stream's frames: stream id, 3 pad bytes, payload length
_STDOUT = 1  # stream ids in the frame header; 2 is stderr
_IO_CHUNK = 64 * 2**10


def container_options(
    spec: SandboxSpec,
    *,
    image: str,
    user: str = SANDBOX_USER,
    python: str = "python",
    cpus: float = 1.0,
    runtime: str | None = None,
    gpu_vendor: GpuVendor | None = None,
    gpu_index: int = 0,
    gpu_groups: Sequence[str | int] = AMD_GPU_GROUPS,
    runtime_binds: Mapping[Path, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of `DockerClient.containers.create` for `spec` (a pure function of its inputs).

    `spec.workdir` and the bind sources are used as given: pass absolute paths as the daemon's host sees them.
    `python` is what `argv[0] == "python"` stands for inside the image. With `spec.gpu`, GPU `gpu_index` of
    `gpu_vendor` is the only one the container gets, and inside it is GPU 0.
    """
    limits = spec.limits
    argv = list(spec.argv)
    if argv[0] == "python":
        argv[0] = python
    environment = sandbox_environment(os.path.dirname(python) or "/usr/local/bin", spec.env)
    environment["PATH"] = ":".join(dict.fromkeys(environment["PATH"].split(":")))
    mounts = [Mount(WORKDIR_INSIDE, str(spec.workdir), type="bind", read_only=False)]
    for host, inside in {**(runtime_binds or {}), **spec.ro_binds}.items():
        mounts.append(Mount(inside, str(host), type="bind", read_only=True))
    options: dict[str, Any] = {
        "image": image,
        "command": argv,
        "user": user,
        "working_dir": WORKDIR_INSIDE,
        "hostname": "sandbox",
        "labels": {LABEL: "1", **(labels or {})},
        "stdin_open": True,  # with the default attach flags this also closes stdin when our side ends it
        "init": True,
        "network_mode": "none",
        "read_only": True,
        "mounts": mounts,
        "tmpfs": {SANDBOX_TMP: f"rw,nosuid,nodev,size={limits.tmp_bytes},mode=1777"},
        "shm_size": limits.tmp_bytes,
        "ipc_mode": "private",
        "cap_drop": ["ALL"],
        # The daemon's default seccomp profile applies unless a security option replaces it; none does.
        "security_opt": ["no-new-privileges"],
        "mem_limit": limits.memory_bytes,
        "memswap_limit": limits.memory_bytes,  # equal to mem_limit: no swap
        "oom_score_adj": 1000,  # if the host itself runs short, sandboxed code goes first
        "pids_limit": limits.max_processes + INIT_PROCESSES,
        "nano_cpus": round(cpus * 1e9),
        "ulimits": [
            # SIGXCPU at the limit says plainly what happened; SIGKILL follows for code that ignores it.
            Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds + CPU_KILL_GRACE_SECONDS),
            Ulimit(name="fsize", soft=limits.max_file_bytes, hard=limits.max_file_bytes),
            Ulimit(name="nofile", soft=limits.max_open_files, hard=limits.max_open_files),
            Ulimit(name="core", soft=0, hard=0),
            Ulimit(name="nproc", soft=USER_PROCESS_LIMIT, hard=USER_PROCESS_LIMIT),
        ],
        # Output goes to the attach stream only; a log driver would also store it on the daemon's disk.
        "log_config": LogConfig(type=LogConfig.types.NONE),
    }
    if runtime is not None:
        options["runtime"] = runtime
    if spec.gpu:
        if gpu_vendor == "nvidia":
            options["device_requests"] = [DeviceRequest(device_ids=[str(gpu_index)], capabilities=[["gpu"]])]
            environment.update({"CUDA_VISIBLE_DEVICES": "0", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"})
        elif gpu_vendor == "amd":
            render_node = f"/dev/dri/renderD{AMD_RENDER_NODE_BASE + gpu_index}"
            options["devices"] = ["/dev/kfd:/dev/kfd:rwm", f"{render_node}:{render_node}:rwm"]
            options["group_add"] = [str(group) for group in gpu_groups]
            # ROCm enumerates only the GPUs whose render nodes it can open: the one passed in is GPU 0.
            environment.update({"HIP_VISIBLE_DEVICES": "0", "ROCR_VISIBLE_DEVICES": "0"})
        else:
            raise SandboxError(
                "a GPU run was requested but this worker's docker sandbox has no GPU: configure its GPU vendor "
                "(nvidia or amd) and index"
            )
    options["environment"] = environment
    return options


def parse_user(user: str) -> tuple[int, int]:
    """`"uid:gid"` as numbers; names are refused because the workdir must be handed to the numeric ids."""
    uid, separator, gid = user.partition(":")
    if not (separator and uid.isdigit() and gid.isdigit()):
        raise ValueError(f"user must be numeric 'uid:gid' (e.g. {SANDBOX_USER!r}), got {user!r}")
    return int(uid), int(gid)


def _worker_identity() -> str:
    return _process_identity(os.getpid())


class DockerSandbox(Sandbox):
    """Runs each spec in a fresh container of `image` through the Docker Engine API at `base_url`.

    `base_url` defaults to DOCKER_HOST, else the local unix socket. `runtime="runsc"` selects gVisor.
    `gpu_vendor`/`gpu_index` say which GPU a `spec.gpu` run gets (one per run). `runtime_binds` are host paths
    bound read-only into every run (a runtime the image lacks). `python` is what `argv[0] == "python"` means
    inside the image and `cpus` the CPU share of one run. `user` must be numeric `"uid:gid"`. `check()` makes
    its trial workdir under `scratch_dir` (default: the temporary directory), which, like every workdir, the
    daemon must see at the same path.
    """

    name = "docker"

    def __init__(
        self,
        image: str,
        *,
        base_url: str | None = None,
        runtime: str | None = None,
        gpu_vendor: GpuVendor | None = None,
        gpu_index: int | None = None,
        user: str = SANDBOX_USER,
        runtime_binds: Mapping[Path, str] | None = None,
        python: str = "python",
        cpus: float = 1.0,
        scratch_dir: Path | None = None,
    ) -> None:
        if gpu_vendor not in (None, "nvidia", "amd"):
            raise ValueError(f"gpu_vendor must be 'nvidia', 'amd' or None, got {gpu_vendor!r}")
        if gpu_index is not None and gpu_index < 0:
            raise ValueError(f"gpu_index must be >= 0, got {gpu_index}")
        if not cpus > 0:
            raise ValueError(f"cpus must be positive, got {cpus}")
        self.uid, self.gid = parse_user(user)
        self.image = image
        self.user = user
        self.base_url = base_url
        self.runtime = runtime
        self.gpu_vendor = gpu_vendor
        self.gpu_index = gpu_index or 0
        self.python = python
        self.cpus = cpus
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.gettempdir())
        self.runtime_binds = {Path(host): inside for host, inside in (runtime_binds or {}).items()}
        # Validates the binds like a spec's own (absolute, outside the paths the sandbox mounts itself).
        SandboxSpec(["python"], Path("/"), ro_binds=self.runtime_binds)
        self._client_instance: DockerClient | None = None
        self._client_lock = threading.Lock()
        self._daemon_reports_oom: bool | None = None
        self._swept = False

    # -- the daemon ----------------------------------------------------------------------------------------
    @property
    def client(self) -> DockerClient:
        with self._client_lock:
            if self._client_instance is None:
                try:
                    if self.base_url is None:
                        self._client_instance = from_env(timeout=API_TIMEOUT_SECONDS)
                    else:
                        self._client_instance = DockerClient(
                            base_url=self.base_url, timeout=API_TIMEOUT_SECONDS
                        )
                except DockerException as error:
                    raise SandboxError(f"cannot reach the Docker daemon at {self._where}: {error}") from error
            return self._client_instance

    @property
    def _where(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST") or "the local socket"

    def daemon_reports_oom(self) -> bool:
        """Whether the daemon sets State.OOMKilled when the kernel kills a process of the container.

        Podman before 5.0 never does (containers/podman#13102); Docker does.
        """
        if self._daemon_reports_oom is None:
            components = self.client.api.version().get("Components") or []
            podman = [c for c in components if c.get("Name") == "Podman Engine"]
            major = str(podman[0].get("Version", "0")).split(".")[0] if podman else ""
            self._daemon_reports_oom = not (podman and major.isdigit() and int(major) < 5)
        return self._daemon_reports_oom

    # -- the Sandbox interface -----------------------------------------------------------------------------
    def check(self) -> None:
        try:
            self.client.ping()
        except DockerException as error:
            raise SandboxError(
                f"the Docker daemon at {self._where} does not answer ({error}); start it, or point DOCKER_HOST "
                "(or the sandbox's base_url) at it"
            ) from error
        try:
            self.client.api.inspect_image(self.image)
        except ImageNotFound as error:
            raise SandboxError(
                f"the sandbox image {self.image!r} is not on the Docker host: build it "
                f"(docker build -f docker/sandbox.Dockerfile -t {self.image} .) or pull it"
            ) from error
        if self.runtime is not None:
            runtimes = self.client.api.info().get("Runtimes") or {}
            if self.runtime not in runtimes:
                raise SandboxError(
                    f"the Docker daemon has no runtime {self.runtime!r} (it has: {', '.join(sorted(runtimes))}); "
                    "install and register it (gVisor: runsc install) or unset the sandbox runtime"
                )
        try:
            self.remove_orphans()
        except DockerException as error:
            raise SandboxError(f"cannot list the sandbox containers at {self._where}: {error}") from error
        scratch = self.scratch_dir / f"sandbox-check-{secrets.token_hex(6)}"
        try:
            self.prepare_workdir(scratch)
            argv = ["python", "-c", _CHECK_RUNTIME_SCRIPT, *TRUSTED_PACKAGES]
            with self.run(SandboxSpec(argv, scratch, limits=Limits(wall_seconds=CHECK_SECONDS))) as session:
                result = session.wait()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log = result.log.decode(errors="replace").strip()
        if result.exit_code == 3:
            raise SandboxError(
                f"the sandbox image {self.image!r} can import the autograder's own package {log!r}, so students "
                "could read hidden tests: build it from docker/sandbox.Dockerfile, which installs the runtime only"
            )
        if result.exit_code != 0:
            raise SandboxError(
                f"a trivial sandbox in {self.image!r} did not run ({result.describe()}): {log}. The image needs "
                f"{self.python!r} runnable by user {self.user}"
            )

    def prepare_workdir(self, path: Path) -> None:
        """Create `path` and give it, with anything already in it, to the sandbox user (mode 0700).

        This needs root, or a worker that already runs as the sandbox user.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for directory, dirnames, filenames in os.walk(path):
                for name in (*dirnames, *filenames):
                    os.chown(os.path.join(directory, name), self.uid, self.gid, follow_symlinks=False)
            os.chown(path, self.uid, self.gid)
        elif os.geteuid() != self.uid:
            raise SandboxError(
                f"the docker sandbox runs code as {self.user} and this worker (uid {os.geteuid()}) cannot hand "
                f"the workdir {path} to it: run the worker as root or as uid {self.uid}"
            )
        path.chmod(0o700)

    def run(self, spec: SandboxSpec) -> SandboxSession:
        workdir = Path(spec.workdir)
        if not workdir.is_dir():
            raise SandboxError(
                f"the workdir {workdir} does not exist or is not a directory: create it and call "
                "prepare_workdir() on it before run()"
            )
        ro_binds = {Path(host).resolve(): inside for host, inside in spec.ro_binds.items()}
        for host in ro_binds:
            if not host.exists():
                raise SandboxError(f"the ro_binds source {host} does not exist")
        spec = replace(spec, workdir=workdir.resolve(), ro_binds=ro_binds)
        try:
            if not self._swept:
                self._swept = True
                self.remove_orphans()
            infer_oom = not self.daemon_reports_oom()
        except DockerException as error:
            raise SandboxError(f"the Docker daemon at {self._where} failed: {error}") from error
        deadline = time.time() + spec.limits.wall_seconds
        options = container_options(
            spec,
            image=self.image,
            user=self.user,
            python=self.python,
            cpus=self.cpus,
            runtime=self.runtime,
            gpu_vendor=self.gpu_vendor,
            gpu_index=self.gpu_index,
            gpu_groups=self._gpu_groups() if spec.gpu else AMD_GPU_GROUPS,
            runtime_binds=self.runtime_binds,
            labels={WORKER_LABEL: _worker_identity(), DEADLINE_LABEL: f"{deadline:.0f}"},
        )
        options["name"] = f"autograder-sandbox-{secrets.token_hex(8)}"
        api = self.client.api
        try:
            container_id = self.client.containers.create(**options).id
        except ImageNotFound as error:
            raise SandboxError(
                f"the sandbox image {self.image!r} is not on the Docker host: {error}"
            ) from error
        except DockerException as error:
            raise SandboxError(f"could not create the sandbox container: {error}") from error
        attach: Any = None
        try:
            # Attach before starting, so that no output is missed.
            attach = api.attach_socket(
                container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            connection = _raw_socket(attach, self._where)
            api.start(container_id)
            started = time.monotonic()
            pid = int(api.inspect_container(container_id)["State"].get("Pid") or 0)
        except BaseException as error:
            if attach is not None:
                with contextlib.suppress(OSError):
                    attach.close()
            _remove_container(api, container_id)
            if isinstance(error, DockerException | OSError):
                raise SandboxError(f"could not start the sandbox container: {error}") from error
            raise
        return DockerSandboxSession(
            api=api,
            container_id=container_id,
            attach=attach,
            connection=connection,
            limits=spec.limits,
            started=started,
            pid=pid,
            infer_oom=infer_oom,
        )

    # -- housekeeping --------------------------------------------------------------------------------------
    def remove_orphans(self) -> int:
        """Remove sandbox containers nobody will collect; return how many.

        Those are the containers of workers in this pid namespace that are gone, and any container past its
        wall-clock deadline by ORPHAN_GRACE_SECONDS (its worker, wherever it ran, would have ended it).
        """
        api = self.client.api
        own_namespace = _worker_identity().partition("-")[0]
        removed = 0
        for container in api.containers(all=True, filters={"label": f"{LABEL}=1"}):
            labels = container.get("Labels") or {}
            owner = labels.get(WORKER_LABEL, "")
            namespace, _, rest = owner.partition("-")
            pid = rest.partition("-")[0]
            owner_gone = namespace == own_namespace and pid.isdigit() and _process_identity(pid) != owner
            try:
                overdue = time.time() > float(labels.get(DEADLINE_LABEL, "")) + ORPHAN_GRACE_SECONDS
            except ValueError:
                overdue = False
            if owner_gone or overdue:
                _remove_container(api, container["Id"])
                removed += 1
                logger.warning(
                    "removed the sandbox container %s (%s)",
                    container["Id"][:12],
                    "its worker is gone" if owner_gone else "past its deadline",
                )
        return removed

    def _gpu_groups(self) -> list[str | int]:
        """The groups of the AMD device nodes, by number where this process can see them (as on the daemon's
        host, when the worker runs there), else by name."""
        if self.gpu_vendor != "amd":
            return list(AMD_GPU_GROUPS)
        nodes = [Path("/dev/kfd"), Path(f"/dev/dri/renderD{AMD_RENDER_NODE_BASE + self.gpu_index}")]
        try:
            return sorted({node.stat().st_gid for node in nodes} - {0})
        except OSError:
            return list(AMD_GPU_GROUPS)


def _raw_socket(attach: Any, where: str) -> socket.socket:
    """The socket under the SDK's attach stream (a SocketIO for unix and tcp, the socket itself for TLS)."""
    connection = getattr(attach, "_sock", attach)
    if not isinstance(connection, socket.socket):
        raise SandboxError(
            f"the Docker daemon at {where} is reached through {type(connection).__name__}, not a socket: use a "
            "unix:// or tcp:// address (ssh:// is not supported)"
        )
    connection.settimeout(None)  # the client's API timeout would end a quiet run's stream
    return connection


def _remove_container(api: Any, container_id: str) -> None:
    try:
        api.remove_container(container_id, force=True, v=True)
    except NotFound:
        return
    except DockerException as error:
        logger.warning("could not remove the sandbox container %s: %s", container_id[:12], error)


# ---------------------------------------------------------------------------------------------------------
# The session


class DockerSandboxSession(SandboxSession):
    """A running sandbox container. Its threads move the streams, watch the clock and collect the result."""

    def __init__(
        self,
        *,
        api: Any,
        container_id: str,
        attach: Any,
        connection: socket.socket,
        limits: Limits,
        started: float,
        pid: int,
        infer_oom: bool,
    ) -> None:
        self._api = api
        self.container_id = container_id
        self._attach = attach  # keeps the SDK's HTTP response, and so the connection, alive
        self._connection = connection
        self._limits = limits
        self._started = started
        self._infer_oom = infer_oom
        self.pid = pid
        stdin_read, stdin_write = os.pipe()
        stdout_read, self._stdout_write = os.pipe()
        # Readable once the run is over: tells the pumps to stop waiting on the grader.
        self._stop_read, self._stop_write = os.pipe()
        os.set_blocking(self._stdout_write, False)
        self.stdin = cast(BinaryIO, open(stdin_write, "wb", buffering=0))  # noqa: SIM115 - closed by close()
        self.stdout = cast(BinaryIO, open(stdout_read, "rb", buffering=0))  # noqa: SIM115
        self._log = CappedLog(limits.log_bytes)
        self._lock = threading.Lock()
        self._exited = False  # the container has stopped: the clock must not claim it
        self._killed = False  # we killed it (kill() or the clock)
        self._timed_out = False
        self._discard_stdout = False
        self._stopped = False
        self._done = threading.Event()
        self._result: SandboxResult | None = None
        self._failure: BaseException | None = None
        name = f"sandbox-{container_id[:12]}"
        self._output_pump = threading.Thread(target=self._pump_output, name=f"{name}-output", daemon=True)
        self._input_pump = threading.Thread(
            target=self._pump_input, args=(stdin_read,), name=f"{name}-input", daemon=True
        )
        self._output_pump.start()
        self._input_pump.start()
        threading.Thread(target=self._reap, name=f"{name}-reaper", daemon=True).start()
        threading.Thread(target=self._watch_clock, name=f"{name}-clock", daemon=True).start()

    def wait(self, timeout: float | None = None) -> SandboxResult:
        if not self._done.wait(timeout):
            raise TimeoutError(
                f"sandbox container {self.container_id[:12]} is still running after {timeout} s"
            )
        if self._result is None:
            raise SandboxError(
                f"collecting sandbox container {self.container_id[:12]} failed: {self._failure!r}"
            )
        return self._result

    def kill(self) -> None:
        with self._lock:
            if self._exited:
                return
            self._killed = True
        self._send_kill()

    def _send_kill(self) -> None:
        # Nobody needs the output of a killed run, and the daemon may not see the container end while the
        # attach stream backs up (podman's conmon blocks on it): stop waiting for the grader to read stdout.
        self._stop_pumps()
        try:
            self._api.kill(self.container_id, signal="SIGKILL")
        except DockerException as error:
            # Already stopped or removed: nothing left to kill.
            logger.debug("kill of sandbox container %s: %s", self.container_id[:12], error)

    def _watch_clock(self) -> None:
        remaining = self._limits.wall_seconds - (time.monotonic() - self._started)
        if self._done.wait(max(0.0, remaining)):
            return
        with self._lock:
            if self._exited:
                return
            self._timed_out = self._killed = True
        self._send_kill()

    # -- the streams ---------------------------------------------------------------------------------------
    def _pump_input(self, pipe: int) -> None:
        """Copy what the grader writes to stdin into the attach connection; its end of stream ends stdin."""
        poller = select.poll()
        poller.register(pipe, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_read in ready and pipe not in ready:
                    return
                chunk = os.read(pipe, _IO_CHUNK)
                if not chunk:
                    self._connection.shutdown(socket.SHUT_WR)
                    return
                self._connection.sendall(chunk, socket.MSG_NOSIGNAL)
        except OSError:
            return  # the container is gone; the grader's next write gets a broken pipe
        finally:
            os.close(pipe)

    def _pump_output(self) -> None:
        """Split the attach stream's frames: stdout into the grader's pipe, stderr into the capped log.

        Stdout waits while the grader's pipe is full (the code waits too, as on a pipe) and is dropped once
        the grader closes its end or the run is stopped; stderr is read on past the log's cap.
        """
        try:
            while header := self._receive(_FRAME_HEADER.size):
                if len(header) < _FRAME_HEADER.size:
                    break
                stream, remaining = _FRAME_HEADER.unpack(header)
                while remaining:
                    payload = self._receive(min(remaining, _IO_CHUNK))
                    if not payload:
                        return
                    remaining -= len(payload)
                    if stream == _STDOUT:
                        self._deliver(payload)
                    else:
                        self._log.append(payload)
        except OSError as error:
            logger.debug("attach stream of %s ended: %s", self.container_id[:12], error)
        finally:
            os.close(self._stdout_write)

    def _receive(self, size: int) -> bytes:
        """Up to `size` bytes, fewer only at the end of the stream."""
        data = b""
        while len(data) < size:
            chunk = self._connection.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def _deliver(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._discard_stdout:
            try:
                view = view[os.write(self._stdout_write, view) :]
            except BlockingIOError:
                poller = select.poll()
                poller.register(self._stdout_write, select.POLLOUT)
                poller.register(self._stop_read, select.POLLIN)
                if self._stop_read in {fd for fd, _ in poller.poll()}:
                    self._discard_stdout = True  # the run is over and nobody reads: drop the rest
            except BrokenPipeError:
                self._discard_stdout = True  # the grader closed stdout

    # -- collecting ----------------------------------------------------------------------------------------
    def _reap(self) -> None:
        try:
            self._api.wait(self.container_id, timeout=None)
            with self._lock:
                self._exited = True
            wall_seconds = time.monotonic() - self._started
            self._result = self._collect(wall_seconds)
        except BaseException as error:
            self._failure = error
            logger.exception("collecting sandbox container %s failed", self.container_id[:12])
            with self._lock:
                self._exited = True
            self._send_kill()
        finally:
            self._finish()
            self._done.set()

    def _collect(self, wall_seconds: float) -> SandboxResult:
        deadline = time.monotonic() + TEARDOWN_SECONDS
        # The rest of the output is still on its way; give the grader time to read its stdout.
        self._output_pump.join(TEARDOWN_SECONDS)
        if self._output_pump.is_alive():
            self._stop_pumps()
            self._output_pump.join(max(0.0, deadline - time.monotonic()))
        state = self._api.inspect_container(self.container_id)["State"]
        exit_code, signum = _decode_exit_code(int(state.get("ExitCode") or 0))
        oom_killed = bool(state.get("OOMKilled"))
        if not oom_killed and self._infer_oom and signum == signal.SIGKILL and not self._killed:
            # The daemon does not report OOM kills (podman < 5). We did not send this SIGKILL, the kernel's OOM
            # killer is what sends one; the only other senders are RLIMIT_CPU's hard limit for code that
            # ignores SIGXCPU, and the code itself.
            oom_killed = True
        return SandboxResult(
            exit_code=exit_code,
            signal=signum,
            timed_out=self._timed_out,
            wall_seconds=wall_seconds,
            cpu_seconds=None,
            max_rss_bytes=None,
            oom_killed=oom_killed,
            log=self._log.getvalue(),
            log_truncated=self._log.truncated,
            limits=self._limits,
        )

    def _stop_pumps(self) -> None:
        """Make the stop pipe readable (once): the pumps stop waiting on the grader's ends of the pipes."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        os.write(self._stop_write, b"x")

    def _finish(self) -> None:
        """Remove the container and release the connection; the pumps end with it."""
        _remove_container(self._api, self.container_id)
        self._stop_pumps()
        with contextlib.suppress(OSError):
            self._connection.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked on the connection
        self._input_pump.join(TEARDOWN_SECONDS)
        self._output_pump.join(TEARDOWN_SECONDS)
        with contextlib.suppress(OSError):
            self._attach.close()
        with contextlib.suppress(OSError):
            self._connection.close()
        if not (self._input_pump.is_alive() or self._output_pump.is_alive()):
            os.close(self._stop_read)
            os.close(self._stop_write)


def _decode_exit_code(code: int) -> tuple[int | None, int | None]:
    """(exit code, signal): the container's init reports a child killed by signal N as 128 + N, like a shell;
    a program that exits with such a code on purpose reads the same."""
    if 128 < code < 128 + signal.NSIG:
        return None, code - 128
    return code, None
