"""The `local` sandbox backend: bubblewrap under a dedicated uid.

Isolation comes from bwrap's namespaces (no network, own pid/ipc/uts/mount namespaces, nested user namespaces
disabled), a file system built from read-only binds (/usr, a few /etc files, the Python runtime) plus a private
/tmp and the workdir at /work, and a seccomp filter of kernel interfaces graded code never needs. Resources are
capped by rlimits, a memory and a pids cgroup where this process may create them, and a wall-clock kill of the
whole tree. docs/sandbox.md has the full picture and its known gaps.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import resource
import secrets
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from worker.sandbox.base import (
    WORKDIR_INSIDE,
    Limits,
    Sandbox,
    SandboxError,
    SandboxResult,
    SandboxSession,
    SandboxSpec,
)

logger = logging.getLogger(__name__)

NOBODY = 65534
# Paths inside the sandbox: both are private tmpfs mounts of Limits.tmp_bytes each.
SANDBOX_TMP = "/tmp"  # noqa: S108
SANDBOX_SHM = "/dev/shm"  # noqa: S108
# Where a virtualenv runtime is bound, whatever its host path: the sandbox never learns where the
# checkout lives, and a venv under /work or /tmp cannot collide with the sandbox's own mounts.
RELOCATED_RUNTIME = "/opt/sandbox-python"
# The /etc files Python and torch use; the rest of /etc (passwd, shadow, hosts, ...) stays out.
ETC_FILES = ("/etc/ld.so.cache", "/etc/nsswitch.conf", "/etc/localtime")
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
GPU_DEVICE_PATTERNS = ("nvidia*", "kfd", "dri")
# bwrap's monitor and the pid namespace's init share the run's pids cgroup (or uid) with the student's code.
BWRAP_PROCESSES = 2
# RLIMIT_AS caps virtual memory, not RSS: leave room for torch's mappings (~0.6 GiB for CPU torch), thread
# stacks and malloc arenas, so that the cgroup (where there is one) is what stops a real memory hog.
ADDRESS_SPACE_HEADROOM = 2 * 2**30
# RLIMIT_CPU's hard limit comes this long after the soft one (which sends SIGXCPU).
CPU_KILL_GRACE_SECONDS = 1
# After the sandbox's main process ends, how long the rest of its tree may take to disappear.
TEARDOWN_SECONDS = 5.0
CHECK_SECONDS = 30.0
# How long bwrap may take to set up a sandbox and report its pid.
BWRAP_START_SECONDS = 30.0
# Packages of the autograder itself: if the sandbox's runtime can import them, students can read hidden tests.
TRUSTED_PACKAGES = ("graders", "reference_impl", "server", "worker")
_CHECK_RUNTIME_SCRIPT = """\
import importlib.util, os, sys
for name in sys.argv[1:]:
    spec = importlib.util.find_spec(name)
    # An editable install's finder offers a namespace spec even where its source tree is not mounted.
    locations = (spec.submodule_search_locations or ()) if spec else ()
    if spec is not None and (spec.origin is not None or any(map(os.path.isdir, locations))):
        print(name, file=sys.stderr)
        sys.exit(3)
"""

_already_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _already_logged:
        _already_logged.add(message)
        logger.warning(message)


def sandbox_environment(runtime_bin: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of sandboxed code: a minimal base plus `extra`."""
    cache = f"{SANDBOX_TMP}/.cache"
    env = {
        "PATH": f"{runtime_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": SANDBOX_TMP,
        "TMPDIR": SANDBOX_TMP,
        "USER": "sandbox",  # getpass.getuser() needs a name; there is no /etc/passwd inside
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "XDG_CACHE_HOME": cache,
        "TORCH_HOME": f"{cache}/torch",
        "TORCHINDUCTOR_CACHE_DIR": f"{cache}/torchinductor",
        "TORCH_EXTENSIONS_DIR": f"{cache}/torch_extensions",
        "TRITON_CACHE_DIR": f"{cache}/triton",
    }
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------------------
# The Python runtime


@dataclass(frozen=True)
class Runtime:
    """The Python runtime bound into the sandbox: `binds` are (host path, path inside) pairs."""

    binds: tuple[tuple[Path, str], ...]
    interpreter: str  # path inside
    bin_dir: str  # path inside


def locate_runtime(prefix: Path) -> Runtime:
    """Bind `prefix` (a venv or a Python installation) read-only, and its base installation too.

    A venv is always bound at RELOCATED_RUNTIME (Python finds pyvenv.cfg beside the interpreter, so it
    works anywhere): its host path would reveal where the checkout lives, and under /work or /tmp it would
    collide with the sandbox's own mounts. A plain installation keeps its path (its prefix is compiled in).
    """
    prefix = prefix.resolve()
    for name in ("python", "python3"):
        if (prefix / "bin" / name).exists():
            python = prefix / "bin" / name
            break
    else:
        raise SandboxError(
            f"no bin/python under {prefix}: python_prefix must be a virtualenv or Python installation"
        )
    is_venv = (prefix / "pyvenv.cfg").is_file()
    inside = RELOCATED_RUNTIME if is_venv or _under(prefix, WORKDIR_INSIDE) else str(prefix)
    binds: list[tuple[Path, str]] = []
    if not _under(prefix, "/usr"):
        binds.append((prefix, inside))
    base = python.resolve().parent.parent  # where a venv's bin/python symlink leads
    if not _under(base, "/usr") and not _under(base, str(prefix)):
        if _under(base, WORKDIR_INSIDE):
            raise SandboxError(
                f"the Python installation {base} lies under {WORKDIR_INSIDE}; install it elsewhere"
            )
        binds.append((base, str(base)))
    return Runtime(tuple(binds), interpreter=f"{inside}/bin/{python.name}", bin_dir=f"{inside}/bin")


def _under(path: Path | str, ancestor: str) -> bool:
    return PurePosixPath(path).is_relative_to(ancestor)


# ---------------------------------------------------------------------------------------------------------
# Permissions as the sandbox uid sees them


def _blocked_component(path: Path, uid: int, gid: int, *, write: bool) -> Path | None:
    """The first component of `path` that uid:gid (no supplementary groups) cannot reach, by mode bits.

    Directories on the way need search permission; the path itself needs read (and write, if asked).
    ACLs are not consulted: the check errs on the side of clear errors, bwrap has the final word.
    """
    path = Path(os.path.abspath(path))
    chain = [*reversed(path.parents), path]
    for component in chain:
        try:
            info = component.stat()
        except OSError:
            return component
        is_last = component == path
        needed = (stat.S_IROTH | (stat.S_IWOTH if write else 0)) if is_last else 0
        if stat.S_ISDIR(info.st_mode):
            needed |= stat.S_IXOTH
        if not _allows(info, uid, gid, needed):
            return component
    return None


def _allows(info: os.stat_result, uid: int, gid: int, needed_other_bits: int) -> bool:
    if uid == 0:
        return True
    if info.st_uid == uid:
        shift = 6
    elif info.st_gid == gid:
        shift = 3
    else:
        shift = 0
    return (info.st_mode >> shift) & needed_other_bits == needed_other_bits


# ---------------------------------------------------------------------------------------------------------
# cgroups


# Then the worker's identity (see _process_identity) and a random part.
RUN_CGROUP_PREFIX = "autograder-sandbox-"
# "cpuacct" stands for CPU accounting: the v1 controller of that name, or cpu.stat in v2.
CGROUP_CONTROLLERS = ("memory", "pids", "cpuacct")


@dataclass(frozen=True)
class CgroupHierarchy:
    """A cgroup hierarchy holding a controller: per-run cgroups are created under `parent` (our own cgroup)."""

    version: int
    parent: Path


def discover_cgroups(proc_self_cgroup: str, mountinfo: str) -> dict[str, CgroupHierarchy]:
    """Where each of CGROUP_CONTROLLERS can be used, from /proc/self/cgroup and /proc/self/mountinfo.

    cgroup v2 is preferred where it offers the controller (its cgroup.controllers lists it; CPU accounting,
    cpu.stat, is in every v2 cgroup); otherwise the v1 hierarchy that has it. Hybrid hosts get a mix (this
    happens with v2 mounted with only hugetlb next to v1 memory, pids and cpuacct).
    """
    own_v1: dict[str, str] = {}
    own_v2: str | None = None
    for line in proc_self_cgroup.splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        if hierarchy_id == "0" and not controllers:
            own_v2 = path
        for controller in controllers.split(","):
            own_v1[controller] = path
    mounts_v1: dict[str, tuple[str, str]] = {}
    mount_v2: tuple[str, str] | None = None
    for line in mountinfo.splitlines():
        mount_fields, _, fs_fields = line.partition(" - ")
        left, right = mount_fields.split(), fs_fields.split()
        if len(left) < 5 or len(right) < 3:
            continue
        root, mount_point = _unescape_mountinfo(left[3]), _unescape_mountinfo(left[4])
        if right[0] == "cgroup2" and mount_v2 is None:
            mount_v2 = (root, mount_point)
        elif right[0] == "cgroup":
            for option in right[2].split(","):
                mounts_v1.setdefault(option, (root, mount_point))
    found: dict[str, CgroupHierarchy] = {}
    v2_dir = _cgroup_dir(mount_v2, own_v2) if mount_v2 and own_v2 is not None else None
    v2_controllers: set[str] = set()
    if v2_dir is not None:
        try:
            v2_controllers = set((v2_dir / "cgroup.controllers").read_text().split())
        except OSError:
            v2_controllers = set()
    v2_controllers.add("cpuacct")
    for controller in CGROUP_CONTROLLERS:
        if v2_dir is not None and controller in v2_controllers:
            found[controller] = CgroupHierarchy(2, v2_dir)
        elif controller in mounts_v1 and controller in own_v1:
            v1_dir = _cgroup_dir(mounts_v1[controller], own_v1[controller])
            if v1_dir is not None:
                found[controller] = CgroupHierarchy(1, v1_dir)
    return found


def _cgroup_dir(mount: tuple[str, str], own_path: str) -> Path | None:
    root, mount_point = mount
    if root != "/" and own_path != root and not own_path.startswith(root + "/"):
        return None  # our cgroup is outside the part of the hierarchy mounted here
    relative = own_path[len(root) :] if root != "/" else own_path
    return Path(mount_point) / relative.lstrip("/")


def _unescape_mountinfo(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    parts = text.split("\\")
    return parts[0] + "".join(chr(int(part[:3], 8)) + part[3:] for part in parts[1:])


class RunCgroup:
    """The cgroups of one run, one directory per hierarchy; limits set on creation, removed at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dirs: dict[str, tuple[int, Path]] = {}  # controller -> (version, directory)
        self._created: list[Path] = []

    @classmethod
    def create(
        cls, hierarchies: Mapping[str, CgroupHierarchy], limits: Limits
    ) -> tuple[RunCgroup, dict[str, str]]:
        """Set up what can be set up; the second value maps each controller that failed to the reason."""
        cgroup = cls(f"{RUN_CGROUP_PREFIX}{_process_identity(os.getpid())}-{secrets.token_hex(6)}")
        failures: dict[str, str] = {}
        for controller in CGROUP_CONTROLLERS:
            hierarchy = hierarchies.get(controller)
            if hierarchy is None:
                failures[controller] = "no cgroup hierarchy with this controller is mounted for this process"
                continue
            try:
                cgroup._add(controller, hierarchy, limits)
            except OSError as error:
                reason = error.strerror or str(error)
                failures[controller] = (
                    f"cannot use {hierarchy.parent} (cgroup v{hierarchy.version}): {reason}"
                )
        return cgroup, failures

    @classmethod
    def adopt(cls, directory: Path) -> RunCgroup:
        """A run cgroup left behind by another worker, to empty and remove."""
        cgroup = cls(directory.name)
        cgroup._created.append(directory)
        return cgroup

    def _add(self, controller: str, hierarchy: CgroupHierarchy, limits: Limits) -> None:
        directory = hierarchy.parent / self.name
        if hierarchy.version == 2 and controller != "cpuacct":
            enabled = (hierarchy.parent / "cgroup.subtree_control").read_text().split()
            if controller not in enabled:
                (hierarchy.parent / "cgroup.subtree_control").write_text(f"+{controller}")
        if directory not in self._created:
            directory.mkdir()
            self._created.append(directory)
        if controller == "pids":
            (directory / "pids.max").write_text(str(limits.max_processes + BWRAP_PROCESSES))
        elif controller == "memory" and hierarchy.version == 1:
            (directory / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
            # No swapping past the limit (where swap is accounted).
            _write_if_supported(directory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        elif controller == "memory":
            (directory / "memory.max").write_text(str(limits.memory_bytes))
            _write_if_supported(directory / "memory.swap.max", "0")
        self.dirs[controller] = (hierarchy.version, directory)

    @property
    def procs_files(self) -> list[str]:
        """The cgroup.procs files a new process writes itself into (once per directory)."""
        return [str(directory / "cgroup.procs") for directory in self._created]

    def pids(self) -> set[int]:
        members: set[int] = set()
        for directory in self._created:
            try:
                members.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return members

    def kill_all(self) -> None:
        for directory in self._created:
            if (directory / "cgroup.kill").exists():
                _write_if_supported(directory / "cgroup.kill", "1")
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def oom_killed(self) -> bool:
        if "memory" not in self.dirs:
            return False
        version, directory = self.dirs["memory"]
        try:
            if version == 2:
                return _counter(directory / "memory.events", "oom_kill") > 0
            counters = directory / "memory.oom_control"
            if "oom_kill " in counters.read_text():
                return _counter(counters, "oom_kill") > 0
            return int((directory / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def cpu_seconds(self) -> float | None:
        """CPU time used by everything that ran in the cgroup."""
        if "cpuacct" not in self.dirs:
            return None
        version, directory = self.dirs["cpuacct"]
        try:
            if version == 2:
                return _counter(directory / "cpu.stat", "usage_usec") / 1e6
            return int((directory / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            return None

    def peak_memory_bytes(self) -> int | None:
        """Peak memory charged to the cgroup: resident memory plus page cache and tmpfs files."""
        if "memory" not in self.dirs:
            return None
        version, directory = self.dirs["memory"]
        try:
            return int(
                (directory / ("memory.peak" if version == 2 else "memory.max_usage_in_bytes")).read_text()
            )
        except (OSError, ValueError):
            return None

    def empty(self, deadline: float) -> None:
        """Kill what is left until the cgroups are empty (or the deadline passes)."""
        while self.pids() and time.monotonic() < deadline:
            self.kill_all()
            time.sleep(0.02)

    def remove(self, deadline: float) -> None:
        for directory in reversed(self._created):
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    if error.errno != errno.EBUSY or time.monotonic() > deadline:
                        logger.warning("could not remove the sandbox cgroup %s: %s", directory, error)
                        break
                    time.sleep(0.02)
        self._created.clear()


def remove_stale_cgroups(parent: Path) -> None:
    """Empty and remove the run cgroups under `parent` whose worker is gone (it crashed or was killed).

    bwrap's --die-with-parent is racy right after start (containers/bubblewrap#633), so a dead worker's
    sandbox may outlive it; this is where it ends. Cgroups of workers in other pid namespaces are left alone:
    from here there is no telling whether those live.
    """
    own_namespace = _process_identity(os.getpid()).partition("-")[0]
    for directory in parent.glob(f"{RUN_CGROUP_PREFIX}*"):
        owner = directory.name.removeprefix(RUN_CGROUP_PREFIX).rpartition("-")[0]  # drop the random part
        namespace, _, rest = owner.partition("-")
        pid = rest.partition("-")[0]
        if namespace != own_namespace or not pid.isdigit() or _process_identity(pid) == owner:
            continue
        leftover = RunCgroup.adopt(directory)
        survivors = len(leftover.pids())
        deadline = time.monotonic() + TEARDOWN_SECONDS
        leftover.empty(deadline)
        leftover.remove(deadline)
        logger.warning(
            "removed the sandbox cgroup %s of a worker that is gone (%d processes)", directory, survivors
        )


def _process_identity(pid: int | str) -> str:
    """`<pid namespace inode>-<pid>-<start time>`: one process, told apart from later users of its pid."""
    try:
        namespace = os.readlink(f"/proc/{pid}/ns/pid").removeprefix("pid:[").removesuffix("]")
        start_time = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "gone"
    return f"{namespace}-{pid}-{start_time}"


def _write_if_supported(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as error:
        logger.debug("cgroup file %s not written: %s", path, error)


def _counter(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


# ---------------------------------------------------------------------------------------------------------
# seccomp

# Kernel interfaces graded code never needs and that widen the kernel's attack surface (after Docker's default
# profile): they fail with EPERM. x86_64 numbers; on other architectures no filter is installed.
_DENIED_SYSCALLS_X86_64_TABLE = """
ptrace=101 syslog=103 uselib=134 vhangup=153 pivot_root=155 _sysctl=156 acct=163
mount=165 umount2=166 swapon=167 swapoff=168 reboot=169 iopl=172 ioperm=173 create_module=174
init_module=175 delete_module=176 quotactl=179 lookup_dcookie=212 kexec_load=246 add_key=248
request_key=249 keyctl=250 unshare=272 perf_event_open=298 fanotify_init=300 name_to_handle_at=303
open_by_handle_at=304 setns=308 process_vm_readv=310 process_vm_writev=311 kcmp=312 finit_module=313
kexec_file_load=320 bpf=321 userfaultfd=323 io_uring_setup=425 io_uring_enter=426 io_uring_register=427
open_tree=428 move_mount=429 fsopen=430 fsconfig=431 fsmount=432 fspick=433 mount_setattr=442
quotactl_fd=443
"""
_DENIED_SYSCALLS_X86_64 = {
    name: int(number)
    for name, number in (entry.split("=") for entry in _DENIED_SYSCALLS_X86_64_TABLE.split())
}
# socket() and socketpair() may create only these address families; any other fails with EAFNOSUPPORT, as on a
# kernel built without it. The network namespace already isolates AF_INET/AF_INET6 (a loopback of its own, which
# gloo and friends use for multi-process assignments) and AF_UNIX's abstract names, but not everything: AF_VSOCK
# reaches the hypervisor's host from inside any namespace, and families like AF_ALG, AF_KEY, AF_XDP, AF_RDS,
# AF_TIPC or AF_BLUETOOTH are kernel attack surface graded code never needs. Netlink is limited to
# NETLINK_ROUTE (getifaddrs and getaddrinfo use it); audit, uevent, generic netlink and the rest are refused.
_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16
_NETLINK_ROUTE = 0
_SOCKET_SYSCALLS_X86_64 = {"socket": 41, "socketpair": 53}
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
# Offsets in struct seccomp_data: nr, arch, instruction_pointer, then args[6] as 64-bit values. The socket
# arguments are ints: the kernel reads the low 32 bits, which come first on little-endian x86_64.
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARGS = 0, 4, 16


def seccomp_program() -> bytes | None:
    """A classic-BPF seccomp filter (the format `bwrap --seccomp` reads), or None off x86_64."""
    if platform.machine() != "x86_64":
        return None
    # (code, k, jump-if-true label, jump-if-false label, own label); labels resolve to forward offsets below.
    program: list[tuple[int, int, str | None, str | None, str | None]] = []

    def emit(
        code: int, k: int, true: str | None = None, false: str | None = None, label: str | None = None
    ) -> None:
        program.append((code, k, true, false, label))

    emit(_BPF_LD_W_ABS, _OFFSET_ARCH)
    emit(_BPF_JEQ_K, _AUDIT_ARCH_X86_64, false="kill")  # i386 and x32 entry points dodge the numbers below
    emit(_BPF_LD_W_ABS, _OFFSET_NR)
    emit(_BPF_JGE_K, _X32_SYSCALL_BIT, true="kill")
    for number in sorted(_DENIED_SYSCALLS_X86_64.values()):
        emit(_BPF_JEQ_K, number, true="deny")
    for number in _SOCKET_SYSCALLS_X86_64.values():
        emit(_BPF_JEQ_K, number, true="socket")
    emit(_BPF_RET_K, _SECCOMP_RET_ALLOW)
    emit(_BPF_LD_W_ABS, _OFFSET_ARGS, label="socket")  # the address family
    for family in (_AF_UNIX, _AF_INET, _AF_INET6):
        emit(_BPF_JEQ_K, family, true="socket_allow")
    emit(_BPF_JEQ_K, _AF_NETLINK, false="no_family")
    emit(_BPF_LD_W_ABS, _OFFSET_ARGS + 2 * 8)  # the netlink protocol
    emit(_BPF_JEQ_K, _NETLINK_ROUTE, true="socket_allow")
    emit(_BPF_RET_K, _SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT, label="no_family")
    emit(_BPF_RET_K, _SECCOMP_RET_ALLOW, label="socket_allow")  # classic BPF only jumps forward
    emit(_BPF_RET_K, _SECCOMP_RET_ERRNO | errno.EPERM, label="deny")
    emit(_BPF_RET_K, _SECCOMP_RET_KILL_PROCESS, label="kill")

    where = {label: index for index, (*_, label) in enumerate(program) if label is not None}

    def offset(index: int, label: str | None) -> int:
        if label is None:
            return 0
        jump = where[label] - index - 1
        if not 0 <= jump <= 255:
            raise ValueError(f"seccomp jump to {label} out of range: {jump}")
        return jump

    return b"".join(
        struct.pack("=HBBI", code, offset(index, true), offset(index, false), k)
        for index, (code, k, true, false, _) in enumerate(program)
    )


# ---------------------------------------------------------------------------------------------------------
# stderr capture


class CappedLog:
    """Keeps at most `limit` bytes of a stream: its beginning and its end, where the fatal traceback is."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tail_limit = limit // 4
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def append(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - self._tail_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > self._tail_limit:
            del self._tail[: len(self._tail) - self._tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def getvalue(self) -> bytes:
        if not self.truncated:
            return bytes(self._head + self._tail)
        omitted = self.total - len(self._head) - len(self._tail)
        marker = f"\n[... {omitted} bytes of output omitted ...]\n".encode()
        head_room = self.limit - len(marker) - len(self._tail)
        if head_room < 0:
            return bytes(self._head[: self.limit])
        return bytes(self._head[:head_room] + marker + self._tail)


# ---------------------------------------------------------------------------------------------------------
# The session


class LocalSandboxSession(SandboxSession):
    """A process tree under bwrap. A reaper thread collects it and cleans up even if nobody calls wait()."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        limits: Limits,
        cgroup: RunCgroup | None,
        init_pidfd: int | None,
    ) -> None:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        self._started = time.monotonic()
        self._process = process
        self._limits = limits
        self._cgroup = cgroup
        self._init_pidfd = init_pidfd
        self.pid = process.pid
        self.stdin = cast(BinaryIO, process.stdin)
        self.stdout = cast(BinaryIO, process.stdout)
        self._log = CappedLog(limits.log_bytes)
        self._lock = threading.Lock()
        self._exiting = False  # the pid is a zombie about to be reaped: never signal it again
        self._timed_out = False
        self._done = threading.Event()
        self._result: SandboxResult | None = None
        self._failure: BaseException | None = None
        name = f"sandbox-{self.pid}"
        self._drainer = threading.Thread(
            target=self._drain, args=(process.stderr,), name=f"{name}-stderr", daemon=True
        )
        self._drainer.start()
        threading.Thread(target=self._reap, name=f"{name}-reaper", daemon=True).start()
        threading.Thread(target=self._watch_clock, name=f"{name}-clock", daemon=True).start()

    def wait(self, timeout: float | None = None) -> SandboxResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"sandboxed process {self.pid} is still running after {timeout} s")
        if self._result is None:
            raise SandboxError(f"collecting sandboxed process {self.pid} failed: {self._failure!r}")
        return self._result

    def kill(self) -> None:
        with self._lock:
            self._kill_locked()
        if self._cgroup is not None:
            self._cgroup.kill_all()

    def _kill_locked(self) -> None:
        # The namespace's init takes every process in the sandbox with it.
        if self._init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
        if not self._exiting:  # bwrap's monitor leads its own process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def _watch_clock(self) -> None:
        if self._done.wait(self._limits.wall_seconds):
            return
        with self._lock:
            if self._exiting:
                return
            self._timed_out = True
            self._kill_locked()
        if self._cgroup is not None:
            self._cgroup.kill_all()

    def _drain(self, pipe: BinaryIO) -> None:
        # Keep reading past the cap so the code never blocks on a full pipe.
        with pipe:
            while chunk := pipe.read(65536):
                self._log.append(chunk)

    def _reap(self) -> None:
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            with self._lock:
                self._exiting = True
            _, status = os.waitpid(self.pid, 0)
            wall_seconds = time.monotonic() - self._started
            self._process.returncode = os.waitstatus_to_exitcode(status)
            self._result = self._collect(status, wall_seconds)
        except BaseException as error:
            self._failure = error
            logger.exception("collecting sandboxed process %s failed", self.pid)
        finally:
            self._done.set()

    def _collect(self, status: int, wall_seconds: float) -> SandboxResult:
        # Usage comes from the cgroups: bwrap's monitor does not wait for the namespace's init, so its own
        # rusage (wait4) would cover bwrap alone.
        deadline = time.monotonic() + TEARDOWN_SECONDS
        self._end_namespace(deadline)
        oom_killed, cpu_seconds, peak_memory = False, None, None
        if self._cgroup is not None:
            self._cgroup.empty(deadline)
            oom_killed = self._cgroup.oom_killed()
            cpu_seconds = self._cgroup.cpu_seconds()
            peak_memory = self._cgroup.peak_memory_bytes()
            self._cgroup.remove(deadline)
        self._drainer.join(max(0.0, deadline - time.monotonic()))
        exit_code, signum = _decode_status(status)
        return SandboxResult(
            exit_code=exit_code,
            signal=signum,
            timed_out=self._timed_out,
            wall_seconds=wall_seconds,
            cpu_seconds=cpu_seconds,
            max_rss_bytes=peak_memory,
            oom_killed=oom_killed,
            log=self._log.getvalue(),
            log_truncated=self._log.truncated,
            limits=self._limits,
        )

    def _end_namespace(self, deadline: float) -> None:
        """The run is over once bwrap's monitor exits: kill whatever the code left running, and wait for it."""
        with self._lock:
            pidfd, self._init_pidfd = self._init_pidfd, None
        if pidfd is None:
            return
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)  # readable once the init, and so its namespace, is gone
            poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
        finally:
            os.close(pidfd)


def _decode_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of the sandboxed command from bwrap's wait status.

    bwrap reports a command killed by signal N as exit code 128 + N, like a shell; a program that exits with
    such a code on purpose reads the same.
    """
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    if 128 < code < 128 + signal.NSIG:
        return None, code - 128
    return code, None


# ---------------------------------------------------------------------------------------------------------
# The backend


class LocalSandbox(Sandbox):
    """Runs each spec under bubblewrap as `uid`:`gid` when this process is root, else as the current user.

    `python_prefix` is the runtime bound into the sandbox (default: this process's venv); it must be readable
    by `uid` and must not contain the autograder's own packages (check() verifies both). `cgroups=False`
    skips cgroups and relies on rlimits alone.
    """

    name = "local"

    def __init__(
        self,
        uid: int = NOBODY,
        gid: int = NOBODY,
        python_prefix: Path | None = None,
        bwrap: str = "bwrap",
        *,
        cgroups: bool = True,
    ) -> None:
        self._as_root = os.geteuid() == 0
        self.uid = uid if self._as_root else os.geteuid()
        self.gid = gid if self._as_root else os.getegid()
        self.runtime = locate_runtime(Path(python_prefix) if python_prefix is not None else Path(sys.prefix))
        self._bwrap = bwrap
        self._use_cgroups = cgroups
        self._swept: set[Path] = set()

    def check(self) -> None:
        if not sys.platform.startswith("linux"):
            raise SandboxError(
                "the local sandbox needs Linux and bubblewrap; use the docker backend elsewhere"
            )
        self._launcher(gpu_groups=[])
        for host, _ in self.runtime.binds:
            blocked = _blocked_component(host, self.uid, self.gid, write=False)
            if blocked is not None:
                raise SandboxError(
                    f"the Python runtime {host} is not readable by uid {self.uid}: {blocked} does not let it "
                    "through. The runtime must be world-readable and outside directories like /root"
                )
        scratch = Path(tempfile.mkdtemp(prefix="sandbox-check-"))
        try:
            scratch.chmod(0o711)
            workdir = scratch / "work"
            self.prepare_workdir(workdir)
            result = self._run_to_end(["true"], workdir)
            if result.exit_code != 0:
                raise SandboxError(
                    f"bubblewrap cannot start a sandbox as uid {self.uid} ({result.describe()}): "
                    f"{result.log.decode(errors='replace').strip()}. Unprivileged user namespaces must be "
                    "allowed: sysctl user.max_user_namespaces > 0 (and kernel.unprivileged_userns_clone=1 or "
                    "an AppArmor profile for bwrap where the distribution restricts them)"
                )
            result = self._run_to_end(["python", "-c", _CHECK_RUNTIME_SCRIPT, *TRUSTED_PACKAGES], workdir)
            log = result.log.decode(errors="replace").strip()
            if result.exit_code == 3:
                raise SandboxError(
                    f"the sandbox's Python runtime can import the autograder's own package {log!r}, so "
                    "students could read hidden tests: give the sandbox a runtime without it (python_prefix)"
                )
            if result.exit_code != 0:
                hosts = ", ".join(str(host) for host, _ in self.runtime.binds) or "/usr"
                raise SandboxError(
                    f"the Python runtime ({hosts}) does not start as uid {self.uid} inside the sandbox "
                    f"({result.describe()}): {log}. It must be readable by that uid: world-readable and "
                    "outside directories it cannot enter, such as /root"
                )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_to_end(self, argv: list[str], workdir: Path) -> SandboxResult:
        with self.run(SandboxSpec(argv, workdir, limits=Limits(wall_seconds=CHECK_SECONDS))) as session:
            return session.wait()

    def prepare_workdir(self, path: Path) -> None:
        """Create `path` if needed and give it, with anything already in it, to the sandbox uid (mode 0700).

        The directories above it must let that uid through; a SandboxError names the first that does not.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            for directory, dirnames, filenames in os.walk(path):
                for name in (*dirnames, *filenames):
                    os.chown(os.path.join(directory, name), self.uid, self.gid, follow_symlinks=False)
            os.chown(path, self.uid, self.gid)
        path.chmod(0o700)
        blocked = _blocked_component(path, self.uid, self.gid, write=True)
        if blocked is not None:
            raise SandboxError(
                f"uid {self.uid} cannot reach the workdir {path}: {blocked} does not let it through. Create "
                f"workdirs under a directory that uid can traverse (mode o+x), e.g. under {tempfile.gettempdir()}"
            )

    def run(self, spec: SandboxSpec) -> SandboxSession:
        """Start the sandbox; it dies with this process (bwrap --die-with-parent). That uses PR_SET_PDEATHSIG,
        which some kernels fire when the *thread* that started it ends: call run() from a thread that
        outlives the run (a Celery task's thread does)."""
        workdir = self._checked_workdir(spec.workdir)
        for host in spec.ro_binds:
            blocked = _blocked_component(Path(host), self.uid, self.gid, write=False)
            if blocked is not None:
                raise SandboxError(
                    f"uid {self.uid} cannot read the ro_binds source {host}: {blocked} is in the way"
                )
        gpu_devices = _gpu_devices() if spec.gpu else []
        launcher = self._launcher(gpu_groups=_device_groups(gpu_devices))
        cgroup = self._cgroup_for(spec.limits)
        in_child = _preexec(cgroup.procs_files if cgroup else [], self._rlimits(spec, cgroup))
        seccomp_fd = _seccomp_fd()
        info_read, info_write = os.pipe()
        passed = (info_write,) if seccomp_fd is None else (info_write, seccomp_fd)
        argv = [*launcher, *self._bwrap_arguments(spec, workdir, gpu_devices, seccomp_fd, info_write)]
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                pass_fds=passed,
                start_new_session=True,
                preexec_fn=in_child,
            )
        except BaseException as error:
            os.close(info_read)
            if cgroup is not None:
                cgroup.remove(time.monotonic() + TEARDOWN_SECONDS)
            if isinstance(error, OSError | subprocess.SubprocessError):
                raise SandboxError(f"could not start bubblewrap ({argv[0]}): {error}") from error
            raise
        finally:
            os.close(info_write)
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        return LocalSandboxSession(process, spec.limits, cgroup, _open_sandbox_init(info_read))

    def _launcher(self, gpu_groups: Iterable[int]) -> list[str]:
        """The command that starts bwrap: through setpriv, as the sandbox uid, when this process is root."""
        bwrap = shutil.which(self._bwrap)
        if bwrap is None:
            raise SandboxError(
                f"bubblewrap ({self._bwrap!r}) is not installed: install the Debian package `bubblewrap` "
                "(the Makefile does) or pass LocalSandbox(bwrap=<path>)"
            )
        if not self._as_root:
            return [bwrap]
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise SandboxError("setpriv is not installed: install the util-linux package")
        groups = ",".join(str(group) for group in gpu_groups)
        return [
            setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            f"--groups={groups}" if groups else "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            bwrap,
        ]

    def _checked_workdir(self, workdir: Path) -> Path:
        if not Path(workdir).is_dir():
            raise SandboxError(
                f"the workdir {workdir} does not exist or is not a directory: create it and call "
                "prepare_workdir() on it before run()"
            )
        workdir = Path(workdir).resolve()
        blocked = _blocked_component(workdir, self.uid, self.gid, write=True)
        if blocked is not None:
            raise SandboxError(
                f"uid {self.uid} cannot use the workdir {workdir}: {blocked} is in the way; call prepare_workdir()"
            )
        return workdir

    def _cgroup_for(self, limits: Limits) -> RunCgroup | None:
        hierarchies: dict[str, CgroupHierarchy] = {}
        if self._use_cgroups:
            try:
                hierarchies = discover_cgroups(
                    Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
                )
            except OSError as error:
                logger.debug("cgroups not discovered: %s", error)
        for hierarchy in hierarchies.values():
            if hierarchy.parent not in self._swept:
                self._swept.add(hierarchy.parent)
                remove_stale_cgroups(hierarchy.parent)
        cgroup, failures = RunCgroup.create(hierarchies, limits)
        if not self._use_cgroups:
            _log_once("sandbox cgroups are disabled (LocalSandbox(cgroups=False)); only rlimits apply")
        else:
            for controller, reason in sorted(failures.items()):
                _log_once(f"sandbox {controller} cgroup unavailable ({reason}); {_FALLBACKS[controller]}")
        return cgroup if cgroup.dirs else None

    def _rlimits(self, spec: SandboxSpec, cgroup: RunCgroup | None) -> list[tuple[int, int, int]]:
        """(resource, soft, hard) for each rlimit."""
        limits = spec.limits
        values = [
            # SIGXCPU at the limit says plainly what happened; SIGKILL follows for code that ignores it.
            (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + CPU_KILL_GRACE_SECONDS),
            (resource.RLIMIT_FSIZE, limits.max_file_bytes, limits.max_file_bytes),
            (resource.RLIMIT_NOFILE, limits.max_open_files, limits.max_open_files),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        if cgroup is None or "pids" not in cgroup.dirs:
            processes = limits.max_processes + BWRAP_PROCESSES
            values.append((resource.RLIMIT_NPROC, processes, processes))
        if not spec.gpu:
            address_space = limits.memory_bytes + ADDRESS_SPACE_HEADROOM
            values.append((resource.RLIMIT_AS, address_space, address_space))
        return values

    def _bwrap_arguments(
        self, spec: SandboxSpec, workdir: Path, gpu_devices: list[Path], seccomp_fd: int | None, info_fd: int
    ) -> list[str]:
        args = [
            "--unshare-all",  # user, ipc, pid, net (loopback only), uts, cgroup namespaces
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            "--clearenv",
            "--info-fd",
            str(info_fd),
        ]
        for key, value in sandbox_environment(self.runtime.bin_dir, spec.env).items():
            args += ["--setenv", key, value]
        args += ["--ro-bind", "/usr", "/usr"]
        for link in ROOT_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        for path in ETC_FILES:
            if os.path.exists(path):
                args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for device in gpu_devices:
            args += ["--dev-bind", str(device), str(device)]
        if gpu_devices:
            args += ["--ro-bind", "/sys", "/sys"]  # CUDA and ROCm read the device topology there
        size = str(spec.limits.tmp_bytes)
        args += ["--size", size, "--tmpfs", SANDBOX_TMP, "--size", size, "--tmpfs", SANDBOX_SHM]
        args += ["--remount-ro", "/dev"]  # bwrap's /dev is an unsized tmpfs; its device nodes stay writable
        for host, inside in self.runtime.binds:
            args += ["--ro-bind", str(host), inside]
        args += ["--bind", str(workdir), WORKDIR_INSIDE]
        for host, inside in spec.ro_binds.items():
            args += ["--ro-bind", str(Path(host).resolve()), inside]
        args += ["--remount-ro", "/", "--chdir", WORKDIR_INSIDE]  # the skeleton bwrap built is read-only too
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        argv = list(spec.argv)
        if argv[0] == "python":
            argv[0] = self.runtime.interpreter
        return [*args, "--", *argv]


_FALLBACKS = {
    "memory": (
        "memory is limited only by RLIMIT_AS (virtual memory, memory_bytes + 2 GiB), and not at all for GPU runs"
    ),
    "pids": "processes are limited by RLIMIT_NPROC, which counts every process of the sandbox uid on the machine",
    "cpuacct": "total CPU time is not measured (cpu_seconds is None); RLIMIT_CPU still caps each process",
}


def _preexec(procs_files: list[str], rlimits: list[tuple[int, int, int]]) -> Callable[[], None]:
    """What the forked child does before exec: join the run's cgroups, then set the rlimits.

    Everything after it (setpriv, bwrap, the student's code) inherits both. It only makes system calls,
    so it is safe in the child of a threaded parent.
    """

    def in_child() -> None:
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" is the writing process
            finally:
                os.close(fd)
        for limit, soft, hard in rlimits:
            resource.setrlimit(limit, (soft, hard))

    return in_child


def _seccomp_fd() -> int | None:
    program = seccomp_program()
    if program is None:
        _log_once(f"no seccomp filter for {platform.machine()}: the sandbox relies on namespaces alone")
        return None
    fd = os.memfd_create("sandbox-seccomp")
    remaining = memoryview(program)
    while remaining:
        remaining = remaining[os.write(fd, remaining) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _open_sandbox_init(info_fd: int) -> int | None:
    """A pidfd for the init of the sandbox's pid namespace, which bwrap names on its --info-fd.

    SIGKILL to that init ends everything in the namespace, and a pidfd never hits a recycled pid. None if
    bwrap stopped before starting the sandbox.
    """
    data = b""
    deadline = time.monotonic() + BWRAP_START_SECONDS
    poller = select.poll()
    poller.register(info_fd, select.POLLIN)
    try:
        while not data.rstrip().endswith(b"}"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                logger.warning("bwrap did not report its sandbox's pid within %s s", BWRAP_START_SECONDS)
                return None
            chunk = os.read(info_fd, 4096)
            if not chunk:
                return None
            data += chunk
    finally:
        os.close(info_fd)
    try:
        info = json.loads(data)
        pid, namespace = int(info["child-pid"]), int(info["pid-namespace"])
        pidfd = os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):
        return None
    try:
        # The pid may have been recycled before pidfd_open: only the real init lives in bwrap's namespace.
        if os.readlink(f"/proc/{pid}/ns/pid") == f"pid:[{namespace}]":
            return pidfd
    except OSError:
        pass
    os.close(pidfd)
    return None


def _gpu_devices() -> list[Path]:
    devices = [device for pattern in GPU_DEVICE_PATTERNS for device in sorted(Path("/dev").glob(pattern))]
    if not devices:
        raise SandboxError("a GPU run was requested but this machine has no /dev/nvidia* or /dev/kfd device")
    return devices


def _device_groups(devices: list[Path]) -> list[int]:
    """The groups that own the GPU device nodes (e.g. render, video), which the sandbox uid must keep."""
    nodes = [node for device in devices for node in (device, *(device.iterdir() if device.is_dir() else ()))]
    return sorted({node.stat().st_gid for node in nodes} - {0})
