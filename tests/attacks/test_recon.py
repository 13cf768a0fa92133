"""Reconnaissance from inside the sandbox: files, /proc, environment, network, privileges, imports, the heap,
and state carried over to the next submission. docs/attacks.md lists what stops each probe."""

from __future__ import annotations

import secrets

import pytest

from tests.attacks.conftest import Arena

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

# What the probes may legitimately reach: the private, per-run writable places.
PRIVATE_WRITES = {"persist_tmp", "persist_shm", "persist_home", "persist_work"}
# Socket families a sandbox may open (its network namespace has only a loopback of its own).
OPENABLE_SOCKETS = {"netlink_route"}


def test_reconnaissance_finds_nothing_and_leaves_nothing_for_the_next_submission(arena: Arena) -> None:
    token = secrets.token_hex(8)
    recon = arena.grade("recon", persist_token=token)
    assert (recon.status, recon.score) == ("graded", 10), recon.explain()

    files = recon.report("recon")["files"]
    assert files["sensitive"] == [], files
    assert set(files["readable"]) <= {"/proc/self/environ"}, files["readable"]
    listings = files["listings"]
    for host_dir in ("bundle_cache", "scratch_dir", "data_dir", "repo"):
        assert isinstance(listings[arena.context()[host_dir]], str), f"{host_dir} is visible: {listings}"
    assert listings["/runner"] == ["protocol.py", "runner.py"]

    sweep = recon.report("sweep")
    assert sweep["complete"] and sweep["entries"] > 1000, sweep  # the walk saw the runtime, and no grader
    assert sweep["hits"] == [], sweep["hits"]

    processes = recon.report("recon")["processes"]
    assert not processes["worker_pid_visible"]
    for pid, seen in processes["pids"].items():
        assert "pytest" not in seen["cmdline"] and "celery" not in seen["cmdline"], (pid, seen)
        leaked = [key for key in seen["env_keys"] if key.startswith(("AUTOGRADER_", "ATTACK_CANARY"))]
        assert not leaked, (pid, leaked)
    environment = recon.report("recon")["environment"]
    assert not [key for key in environment if key.startswith(("AUTOGRADER_", "ATTACK_CANARY"))], environment

    network = recon.report("recon")["network"]
    assert "connected" not in network["connect"].values(), network["connect"]
    assert not network["connect"]["dns example.com"].startswith("("), network["connect"]
    opened = {name for name, result in network["socket"].items() if result == "opened"}
    assert opened <= OPENABLE_SOCKETS, network["socket"]
    assert network["interfaces"] == ["lo"], network["interfaces"]

    privileges = recon.report("recon")["privileges"]
    allowed = {name for name, result in privileges["syscalls"].items() if result == "ok"}
    # /proc/1 is bubblewrap's init inside the sandbox, under the same uid: its memory is the sandbox's own.
    assert allowed <= {"proc_1_mem"}, privileges["syscalls"]
    assert privileges["status"]["CapEff"] == "0000000000000000", privileges["status"]
    assert privileges["status"]["NoNewPrivs"] == "1" and privileges["status"]["Seccomp"] == "2"

    imports = recon.report("recon")["imports"]
    assert not [name for name, result in imports.items() if result.startswith("imported")], imports

    writes = recon.report("recon")["writes"]
    written = {name for name, result in writes.items() if result in ("written", "created")}
    assert written == PRIVATE_WRITES | {"sysv_shm"}, writes

    heap = recon.report("heap")
    assert heap["tensors_seen"] > 0 and heap["expected_found"] == 0, heap
    assert heap["test_strings_found"] == 0, heap
    # A call carries its arguments (and how to reply): nothing about expected values, tests or the seed.
    keys = set(heap["call_header_keys"])
    assert {"op", "fn", "args", "kwargs"} <= keys, heap
    hints = ("expect", "seed", "test", "score", "answer", "ref", "tol")
    assert not [key for key in keys if any(hint in key.lower() for hint in hints)], heap

    # A second submission finds none of what the first one left behind.
    check = arena.grade("persist_check", persist_token=token)
    assert (check.status, check.score) == ("graded", 10), check.explain()
    persist = check.report("persist")
    assert persist["found"] == [], persist
    assert persist["listings"] == {"/tmp": [], "/dev/shm": [], "/work": ["warmup.py"]}, persist
    assert persist["sysv_shm"] == "ENOENT" and not persist["sitecustomize"], persist

    arena.assert_healthy()
