"""The arena for the attack tests: hostile submissions graded through the real pipeline, then audited.

Every attack is submitted through the API as alice, graded by ``worker.grading.grade_submission`` in a real
``LocalSandbox`` (bubblewrap), and read back through the API as alice and as a TA. After each grading the arena
checks, whatever the attack was:

- nothing the student can see (their submission JSON and log) holds the run's seed, the worker's secrets, lines
  of the hidden tests or of the reference implementation, hidden test descriptions or hidden failure details;
- nothing changed outside the job's scratch directory: the repository's graders/ and reference_impl/, canary
  files and directories on the host (world-writable ones included), the scratch root itself;
- no process of the sandbox uid is left running (as root the suite uses a uid of its own for this).

Attack sources live in ``submissions/``; each is submitted as ``warmup.py`` with ``submissions/_prelude.py``
in front of it (shared helpers and the ``CONTEXT`` the test hands it: host paths, ports, pids to aim at).
Attacks report what they found with ``report(...)`` into their own log, the channel a real student reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from graders.package import load_package
from server.assignments.service import publish_package
from server.courses import service as courses
from server.db import get_session_factory
from server.settings import Settings
from tests.api.helpers import submit
from tests.conftest import REPO, World
from worker.grading import GradingContext, grade_submission, sandbox_limits
from worker.sandbox import Limits, LocalSandbox

SUBMISSIONS = Path(__file__).resolve().parent / "submissions"
PRELUDE_IMPORT = re.compile(r"^from _prelude import (?:\([^)]*\)|[^\n]*)$", re.M)
CONTEXT_PLACEHOLDER = "__ATTACK_CONTEXT__"
SOLUTION = (REPO / "graders" / "warmup" / "solution" / "warmup.py").read_text()

# A uid of this test session's own (as root), so "no process of the sandbox uid survives" cannot be confused by
# other sandboxes on the machine: those of the default uid 65534, or of this suite run by someone else meanwhile.
ATTACK_UID = 61_000 + secrets.randbelow(4_000)
# Secrets the worker holds while it grades; none may reach the sandbox or anything the student sees.
SECRET_KEY = f"attack-canary-secret-key-{secrets.token_hex(16)}"
ENV_CANARY = f"attack-canary-env-{secrets.token_hex(16)}"

# The quick copy of the warm-up package: runaway code is stopped in seconds instead of minutes.
QUICK_LIMITS = {
    "time_limit_s": "30",
    "call_timeout_s": "3",
    "startup_timeout_s": "8",
    "memory_mb": "1536",
    "max_processes": "32",
}

REPORT_LINE = re.compile(r"^ATTACK-REPORT (\{.*\})$", re.M)


def source_of(name: str, context: dict[str, Any] | None = None) -> str:
    """The warmup.py an attack submits: the prelude with its CONTEXT filled in, then the attack itself."""
    prelude = (SUBMISSIONS / "_prelude.py").read_text()
    attack = PRELUDE_IMPORT.sub("", (SUBMISSIONS / f"{name}.py").read_text())
    payload = json.dumps(context or {}, sort_keys=True)
    assert '"""' not in payload
    return prelude.replace(CONTEXT_PLACEHOLDER, payload) + "\n\n# ---- the attack ----\n" + attack


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (mode, size, sha256) of everything under root, bytecode caches aside."""
    snapshot: dict[str, tuple[int, int, str]] = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if name != "__pycache__"]
        for name in [*dirnames, *filenames]:
            path = Path(directory) / name
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            snapshot[str(path.relative_to(root))] = (info.st_mode, info.st_size, digest)
    return snapshot


def processes_of(uid: int) -> list[str]:
    """`pid cmdline` of every live process whose real uid is ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            real_uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
            state = re.search(r"^State:\s+(\S)", status, re.M)
            if real_uid != uid or (state is not None and state.group(1) == "Z"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, AttributeError, ValueError):
            continue
        found.append(f"{entry.name} {cmdline.strip()}")
    return found


def _distinctive_lines(*paths: Path) -> set[str]:
    lines = set()
    for path in paths:
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if len(stripped) >= 30:
                lines.add(stripped)
    return lines


def walk_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from walk_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_keys(item)


@dataclass
class Graded:
    """One attack after grading: what the student and the staff can read about it."""

    name: str
    submission_id: int
    outcome: str  # grade_submission's answer: graded, failed, retry, error, skipped
    source: str
    elapsed_s: float
    student: dict[str, Any]  # GET /api/submissions/{id} as alice
    student_log: str  # GET /api/submissions/{id}/log as alice
    log_truncated: bool
    staff: dict[str, Any]  # the same as a TA

    @property
    def score(self) -> float | None:
        return self.student["score"]

    @property
    def status(self) -> str:
        return str(self.student["status"])

    @property
    def failure_reason(self) -> str:
        return str(self.student["failure_reason"] or "")

    @property
    def seed(self) -> str:
        return str(self.staff["staff"]["seed"])

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        """Every test's result as the staff sees it, by name."""
        return {test["name"]: test for test in self.staff["tests"]}

    def passed(self) -> set[str]:
        return {name for name, test in self.results.items() if test["passed"]}

    def reports(self) -> dict[str, Any]:
        """What the attack reported in its log (later reports of the same name update earlier ones)."""
        merged: dict[str, Any] = {}
        for line in REPORT_LINE.findall(self.student_log):
            entry = json.loads(line)
            merged.setdefault(entry.pop("attack"), {}).update(entry)
        return merged

    def report(self, name: str) -> dict[str, Any]:
        reports = self.reports()
        assert name in reports, f"the attack did not report {name!r}; log:\n{self.student_log[-3000:]}"
        return reports[name]

    def explain(self) -> str:
        tests = {name: (test["passed"], test["message"][:160]) for name, test in self.results.items()}
        return (
            f"{self.name}: outcome={self.outcome} status={self.status} score={self.score} "
            f"reason={self.failure_reason!r}\ntests={json.dumps(tests, indent=1)}\nlog tail:\n"
            f"{self.student_log[-2500:]}"
        )


@dataclass
class Canaries:
    """Host-side things no sandbox may touch or reach; each attack is told where they are."""

    root: Path  # world-writable directory in the host's /tmp, with a world-writable file
    victim: Path  # another "submission" and a stray copy of hidden tests, world-readable, on the host
    tcp_loopback: socket.socket
    tcp_any: socket.socket
    unix_abstract: socket.socket
    unix_path: socket.socket
    abstract_name: str
    host_ip: str | None

    def context(self) -> dict[str, Any]:
        return {
            "canary_dir": str(self.root),
            "canary_file": str(self.root / "canary.txt"),
            "victim_dir": str(self.victim),
            "tcp_loopback_port": self.tcp_loopback.getsockname()[1],
            "tcp_any_port": self.tcp_any.getsockname()[1],
            "unix_abstract": self.abstract_name,
            "unix_path": str(self.root / "listener.sock"),
            "host_ip": self.host_ip,
        }

    def take_snapshots(self) -> dict[str, dict[str, tuple[int, int, str]]]:
        return {
            "canary": tree_snapshot(self.root),
            "victim": tree_snapshot(self.victim),
            "graders": tree_snapshot(REPO / "graders"),
            "reference_impl": tree_snapshot(REPO / "reference_impl"),
        }

    def connections(self) -> list[str]:
        """Connections any listener accepted (there must be none)."""
        accepted = []
        for sock in (self.tcp_loopback, self.tcp_any, self.unix_abstract, self.unix_path):
            with contextlib.suppress(BlockingIOError):
                conn, address = sock.accept()
                conn.close()
                accepted.append(f"{sock.getsockname()!r} <- {address!r}")
        return accepted


def _host_ip() -> str | None:
    """This machine's address on its default route (a UDP 'connect' sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing decision matters
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else str(address)


def _listener(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(8)
    sock.setblocking(False)
    return sock


@pytest.fixture(scope="session")
def attack_sandbox() -> LocalSandbox:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    sandbox = LocalSandbox(uid=ATTACK_UID, gid=ATTACK_UID)
    sandbox.check()
    return sandbox


@pytest.fixture(scope="session")
def quick_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The warm-up package with short limits, published as an instructor would for a quick assignment."""
    package = tmp_path_factory.mktemp("attack-package") / "warmup"
    shutil.copytree(REPO / "graders" / "warmup", package, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = package / "assignment.toml"
    text = manifest.read_text()
    for key, value in QUICK_LIMITS.items():
        text, count = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
        assert count == 1, key
    text = re.sub(r"(?m)^version\s*=.*$", 'version = "1.0.0-attacks"', text)
    # A static check of the source, where the package has one, is a deterrent a determined student gets round
    # (docs/attacks.md); these attacks are about what the sandbox and the grader do with code that runs.
    text = re.sub(r"(?ms)^\[static_check\]\n.*?(?=^\[)", "", text)
    manifest.write_text(text)
    return package


@pytest.fixture(scope="session")
def canaries() -> Iterator[Canaries]:
    root = Path(tempfile.mkdtemp(prefix="ag-attack-canary-"))
    root.chmod(0o777)  # world-writable on purpose: only the sandbox's confinement keeps it out
    canary = root / "canary.txt"
    canary.write_text("untouched\n")
    canary.chmod(0o666)
    victim = Path(tempfile.mkdtemp(prefix="ag-attack-victim-"))
    victim.chmod(0o755)
    (victim / "warmup.py").write_text("# bob's submission: def softmax(x, dim=-1): ...\n")
    shutil.copy(REPO / "graders" / "warmup" / "tests.py", victim / "tests.py")
    for path in victim.iterdir():
        path.chmod(0o644)
    abstract_name = f"ag-attack-{secrets.token_hex(8)}"
    sockets = [
        _listener(socket.AF_INET, ("127.0.0.1", 0)),
        _listener(socket.AF_INET, ("0.0.0.0", 0)),  # noqa: S104 - the sandbox must not reach even this
        _listener(socket.AF_UNIX, "\0" + abstract_name),
        _listener(socket.AF_UNIX, str(root / "listener.sock")),
    ]
    (root / "listener.sock").chmod(0o777)
    yield Canaries(root, victim, *sockets, abstract_name=abstract_name, host_ip=_host_ip())
    for sock in sockets:
        sock.close()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(victim, ignore_errors=True)


@pytest.fixture
def settings(configure: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """As tests/conftest.py's, plus secrets in the worker's environment that must never reach a sandbox."""
    monkeypatch.setenv("ATTACK_CANARY_TOKEN", ENV_CANARY)
    return configure(
        secret_key=SECRET_KEY,
        database__url=f"sqlite:///{tmp_path / 'var' / 'autograder.db'}",
        sandbox__uid=str(ATTACK_UID),
        sandbox__gid=str(ATTACK_UID),
    )


class Arena:
    def __init__(
        self, world: World, ctx: GradingContext, package: Path, canaries: Canaries, sandbox: LocalSandbox
    ) -> None:
        self.world = world
        self.ctx = ctx
        self.package = load_package(package)
        self.canaries = canaries
        self.sandbox = sandbox
        self.secrets = [SECRET_KEY, ENV_CANARY, world.settings.database_url]
        self.hidden_lines = _distinctive_lines(
            REPO / "graders" / "warmup" / "tests.py", REPO / "reference_impl" / "functional.py"
        )
        self.hidden_descriptions = [t.description for t in self.package.tests if t.visibility != "visible"]
        self.visible_names = {t.name for t in self.package.tests if t.visibility == "visible"}

    def sandbox_limits(self) -> Limits:
        return sandbox_limits(self.package, self.world.settings)

    def context(self, **extra: Any) -> dict[str, Any]:
        return {
            **self.canaries.context(),
            "repo": str(REPO),
            "data_dir": str(self.world.settings.data_path),
            "scratch_dir": str(self.world.settings.scratch_path),
            "bundle_cache": str(self.world.settings.bundle_cache_path),
            "worker_pid": os.getpid(),
            **extra,
        }

    def grade(self, name: str, **extra: Any) -> Graded:
        """Submit the attack ``name`` as alice, grade it, read it back, and audit the aftermath."""
        return self.grade_source(name, source_of(name, self.context(**extra)))

    def grade_source(self, name: str, source: str) -> Graded:
        client, alice, ta = self.world.client, self.world.alice, self.world.ta
        response = submit(self.world, alice, source.encode())
        assert response.status_code == 201, response.text
        submission_id = int(response.json()["id"])
        before = self.canaries.take_snapshots()
        started = time.monotonic()
        outcome = grade_submission(submission_id, self.ctx)
        elapsed = time.monotonic() - started
        student = client.get(f"/api/submissions/{submission_id}", headers=alice.headers)
        log = client.get(f"/api/submissions/{submission_id}/log", headers=alice.headers)
        staff = client.get(f"/api/submissions/{submission_id}", headers=ta.headers)
        assert student.status_code == log.status_code == staff.status_code == 200
        graded = Graded(
            name=name,
            submission_id=submission_id,
            outcome=outcome,
            source=source,
            elapsed_s=elapsed,
            student=student.json(),
            student_log=log.json()["log"],
            log_truncated=log.json()["truncated"],
            staff=staff.json(),
        )
        assert outcome in ("graded", "failed"), graded.explain()  # never an infrastructure fault
        self.check_no_leaks(graded)
        self.check_contained(graded, before)
        return graded

    def assert_healthy(self) -> None:
        """The grader still gives the reference solution full marks after whatever came before."""
        honest = self.grade_source("honest solution", SOLUTION)
        assert (honest.status, honest.score) == ("graded", 10), honest.explain()

    # -- audits ----------------------------------------------------------------------------------------------
    def check_no_leaks(self, graded: Graded) -> None:
        student_text = json.dumps(graded.student) + "\n" + graded.student_log
        assert graded.student.get("staff") is None
        assert "seed" not in set(walk_keys(graded.student))
        assert graded.seed and graded.seed not in student_text, "the run's seed reached the student"
        for secret in self.secrets:
            assert secret not in student_text, f"a worker secret reached the student: {secret[:24]}..."
        own_lines = {line.strip() for line in graded.source.splitlines()}
        leaked = [line for line in self.hidden_lines - own_lines if line in student_text]
        assert not leaked, f"hidden test / reference source reached the student: {leaked[:3]}"
        for description in self.hidden_descriptions:
            assert description not in student_text, f"a hidden test's description leaked: {description}"
        shown = {test["name"] for test in graded.student["tests"]}
        assert shown <= self.visible_names, (
            f"non-visible tests shown to the student: {shown - self.visible_names}"
        )
        reason = graded.failure_reason
        for test in graded.staff["tests"]:
            message = test["message"]
            if test["visibility"] == "visible" or test["passed"] or message.startswith("Not run"):
                continue
            if message.rstrip(".") in reason:  # why the run stopped is the student's to know
                continue
            assert message not in student_text, f"hidden failure details leaked: {message}"

    def check_contained(self, graded: Graded, before: dict[str, Any]) -> None:
        after = self.canaries.take_snapshots()
        changed = [
            f"{area}/{path}"
            for area in before
            for path in sorted(set(before[area]) | set(after[area]))
            if before[area].get(path) != after[area].get(path)
        ]
        # (While someone edits graders/ during the run, their edits show up here too.)
        assert not changed, f"{graded.name} changed things outside its scratch directory: {changed}"
        leftovers = [p.name for p in self.world.settings.scratch_path.glob("*")]
        assert not leftovers, f"job directories left behind: {leftovers}"
        if os.geteuid() == 0:
            deadline = time.monotonic() + 3
            while (survivors := processes_of(ATTACK_UID)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not survivors, f"{graded.name} left processes behind: {survivors}"
        assert not self.canaries.connections(), f"{graded.name} reached a host listener"


@pytest.fixture
def arena(world: World, attack_sandbox: LocalSandbox, quick_package: Path, canaries: Canaries) -> Arena:
    with world.session() as session:
        course = courses.get_course(session=session, slug=world.course)
        publish_package(session=session, course=course, path=quick_package, actor=None)
        session.commit()
    ctx = GradingContext(
        settings=world.settings,
        session_factory=get_session_factory(),
        sandbox=attack_sandbox,
        worker_id="attack-worker",
    )
    return Arena(world, ctx, quick_package, canaries, attack_sandbox)
