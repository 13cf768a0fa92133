"""How long a lone submission waits behind another student's burst, with and without fair ordering.

Drives the worker's real claim logic (``worker.grading.claim_fairest`` with fair order, ``claim`` of the task's
own submission without) on a real, migrated database: a SQLite file, and PostgreSQL when it is reachable. The
gradings themselves are simulated (no sandbox): K workers take the tasks one by one in the broker's order, each
grading lasts a random time around the mean, and a simulated clock advances from one finished grading to the
next. One student queues a burst of B submissions; the lone submission of another student arrives shortly
after. Printed per backend and order: how many gradings started ahead of the lone one after it arrived, its wait
in simulated seconds and in gradings, its turnaround (wait + its own grading), the real time one claim takes,
and the ratio of the lone submission's turnaround without fair order to with it. Earlier graded submissions of
other students (``--history``) make the "served least recently" part of the query do real work.

    .venv/bin/python bench/queue_fairness.py [--burst 50] [--workers 2] [--grading-seconds 30]
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server import db, migrate  # noqa: E402
from server.assignments.models import Assignment  # noqa: E402
from server.auth.models import User  # noqa: E402
from server.bootstrap import bootstrap  # noqa: E402
from server.settings import get_settings  # noqa: E402
from server.submissions import archive  # noqa: E402
from server.submissions.models import Blob, Submission, SubmissionStatus  # noqa: E402
from worker.grading import claim, claim_fairest  # noqa: E402

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Result:
    backend: str
    order: str
    ahead: int  # gradings started after the lone submission arrived and before it was claimed
    wait_s: float
    turnaround_s: float
    makespan_s: float  # until every submission was graded
    claim_ms: list[float]


def reset_caches() -> None:
    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose()
    for cached in (get_settings, db.get_engine, db.get_session_factory):
        cached.cache_clear()


@contextmanager
def database(backend: str, tmp: Path) -> Iterator[None]:
    """A fresh, migrated database of the backend, made the application's database while in use."""
    name = f"ag_bench_{uuid.uuid4().hex[:12]}"
    if backend == "postgresql":
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    else:
        url = f"sqlite:///{tmp / name}.db"
    os.environ.update(
        {"AUTOGRADER_ENV": "test", "AUTOGRADER_DATA_DIR": str(tmp / "var"), "AUTOGRADER_DATABASE__URL": url}
    )
    reset_caches()
    try:
        migrate.upgrade()
        yield
    finally:
        reset_caches()
        if backend == "postgresql":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def seed(*, burst: int, history: int, history_students: int) -> tuple[list[int], Submission]:
    """The burst (queued) and a template for the lone submission; ``history`` graded submissions by others."""
    solution = (REPO / "graders" / "warmup" / "solution" / "warmup.py").read_bytes()
    with db.get_session_factory()() as session:
        world = bootstrap(session=session, settings=get_settings(), packages=[REPO / "graders" / "warmup"])
        assignment: Assignment = world.assignments[0]
        data = archive.pack({"warmup.py": solution})
        sha256 = archive.sha256_hex(data)
        session.add(Blob(sha256=sha256, size=len(data), data=data))
        users = [User(username=f"student{i}", password_hash=None) for i in range(history_students + 2)]
        session.add_all(users)
        session.flush()
        bursty, lone, others = users[0], users[1], users[2:]
        long_ago = datetime.now(UTC) - timedelta(days=3)

        def row(user: User, status: SubmissionStatus, at: datetime) -> Submission:
            return Submission(
                assignment_id=assignment.id,
                user_id=user.id,
                archive_sha256=sha256,
                file_names=["warmup.py"],
                bundle_id=assignment.bundle_id,
                queue=assignment.queue,
                status=status,
                submitted_at=at,
                queued_at=at,
                enqueued_at=at,
                started_at=at if status is SubmissionStatus.graded else None,
            )

        for i in range(history):
            session.add(
                row(others[i % len(others)], SubmissionStatus.graded, long_ago + timedelta(seconds=i))
            )
        now = datetime.now(UTC)
        queued = [row(bursty, SubmissionStatus.queued, now + timedelta(milliseconds=i)) for i in range(burst)]
        session.add_all(queued)
        session.commit()
        return [s.id for s in queued], row(lone, SubmissionStatus.queued, now)


def simulate(backend: str, *, fair: bool, args: argparse.Namespace, durations: list[float]) -> Result:
    burst_ids, lone_template = seed(
        burst=args.burst, history=args.history, history_students=args.history_students
    )
    factory = db.get_session_factory()
    messages = list(burst_ids)  # the broker's order: one task per submission, as they were sent
    lone_id: int | None = None
    lone_claimed_at: float | None = None
    lone_duration = 0.0
    started_after_arrival = 0
    claim_ms: list[float] = []
    finished_at = 0.0
    # (when the worker is free, worker number, the submission it is grading or None)
    free: list[tuple[float, int, int | None]] = [(0.0, k, None) for k in range(args.workers)]
    heapq.heapify(free)
    gradings = 0
    with factory() as session:
        while free:
            clock, worker, done = heapq.heappop(free)
            if done is not None:
                session.execute(
                    update(Submission).where(Submission.id == done).values(status=SubmissionStatus.graded)
                )
                session.commit()
                finished_at = max(finished_at, clock)
            if lone_id is None and clock >= args.arrival:
                lone = Submission(
                    **{
                        column: getattr(lone_template, column)
                        for column in (
                            "assignment_id",
                            "user_id",
                            "archive_sha256",
                            "file_names",
                            "bundle_id",
                        )
                    },
                    queue=lone_template.queue,
                    status=SubmissionStatus.queued,
                    submitted_at=datetime.now(UTC),
                    queued_at=datetime.now(UTC),
                    enqueued_at=datetime.now(UTC),
                )
                session.add(lone)
                session.commit()
                lone_id = lone.id
                messages.append(lone_id)
            if not messages:
                if lone_id is None:
                    heapq.heappush(free, (args.arrival, worker, None))  # idle until the lone one arrives
                continue
            message = messages.pop(0)
            started = time.perf_counter()
            if fair:
                claimed = claim_fairest(
                    session=session, submission_id=message, worker_id=f"w{worker}", lease_seconds=600
                )
                submission_id = claimed.submission_id if claimed else None
                if claimed is not None and claimed.wake_again:
                    messages.append(message)  # as the worker sends the task again
            else:
                attempt = claim(
                    session=session, submission_id=message, worker_id=f"w{worker}", lease_seconds=600
                )
                submission_id = message if attempt is not None else None
            claim_ms.append((time.perf_counter() - started) * 1000)
            if submission_id is None:
                heapq.heappush(free, (clock, worker, None))
                continue
            duration = durations[gradings % len(durations)]
            gradings += 1
            if submission_id == lone_id:
                lone_claimed_at, lone_duration = clock, duration
            elif lone_id is not None and lone_claimed_at is None:
                started_after_arrival += 1
            heapq.heappush(free, (clock + duration, worker, submission_id))
    assert lone_claimed_at is not None, "the lone submission was never claimed"
    wait = lone_claimed_at - args.arrival
    return Result(
        backend=backend,
        order="fair" if fair else "fifo",
        ahead=started_after_arrival,
        wait_s=wait,
        turnaround_s=wait + lone_duration,
        makespan_s=finished_at,
        claim_ms=claim_ms,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=50, help="submissions queued at once by one student")
    parser.add_argument("--workers", type=int, default=2, help="workers grading in parallel (K)")
    parser.add_argument("--grading-seconds", type=float, default=30.0, help="mean simulated grading time")
    parser.add_argument("--jitter", type=float, default=0.2, help="grading times vary by up to this fraction")
    parser.add_argument(
        "--arrival",
        type=float,
        default=1.0,
        help="simulated seconds after the burst when the lone one arrives",
    )
    parser.add_argument("--history", type=int, default=2000, help="earlier graded submissions by others")
    parser.add_argument("--history-students", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    mean = args.grading_seconds
    # The same grading times in the same claim order for both orders: only the choice of submission differs.
    durations = [mean * (1 + rng.uniform(-args.jitter, args.jitter)) for _ in range(args.burst + 1)]
    backends = ["sqlite"]
    if not args.no_postgres:
        if postgres_reachable():
            backends.append("postgresql")
        else:
            print(f"PostgreSQL not reachable at {PG_ADMIN_URL}: SQLite only\n")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="ag-bench-queue-") as tmp:
        for backend in backends:
            for fair in (False, True):
                with database(backend, Path(tmp)):
                    results.append(simulate(backend, fair=fair, args=args, durations=durations))

    print(
        f"lone submission behind a burst of {args.burst} from another student, arriving {args.arrival:g} s "
        f"after it; {args.workers} workers; gradings {mean:g} s +-{args.jitter:.0%}; "
        f"{args.history} earlier gradings of {args.history_students} other students in the database"
    )
    header = (
        f"{'backend':<11} {'order':<5} {'gradings ahead':>14} {'wait s':>8} {'wait/grading':>12} "
        f"{'turnaround s':>12} {'all done s':>10} {'claim ms p50':>12} {'claim ms p95':>12}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        claims = sorted(result.claim_ms)
        p95 = claims[min(len(claims) - 1, int(0.95 * len(claims)))]
        print(
            f"{result.backend:<11} {result.order:<5} {result.ahead:>14} {result.wait_s:>8.1f} "
            f"{result.wait_s / mean:>12.2f} {result.turnaround_s:>12.1f} {result.makespan_s:>10.1f} "
            f"{statistics.median(claims):>12.2f} {p95:>12.2f}"
        )
    print()
    for backend in backends:
        first_come, fair_order = (
            next(r for r in results if r.backend == backend and r.order == order)
            for order in ("fifo", "fair")
        )
        shorter = first_come.turnaround_s / fair_order.turnaround_s
        claim_cost = statistics.median(fair_order.claim_ms) / statistics.median(first_come.claim_ms)
        print(
            f"{backend}: the lone submission's turnaround is {shorter:.1f}x shorter with fair order "
            f"({fair_order.turnaround_s:.1f} s against {first_come.turnaround_s:.1f} s); "
            f"a fair claim costs {claim_cost:.1f}x a first-come claim"
        )


if __name__ == "__main__":
    main()
