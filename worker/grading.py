"""Grading one submission: claim it, run the trusted grader against the sandboxed code, record the result.

Plain Python, callable without a broker (tests do). The Celery task in worker.celery_app is a thin wrapper.

Idempotency: a submission is graded only by whoever moved it from 'queued' to 'running' (attempt += 1) in one
conditional UPDATE, and a result is recorded only by the holder of that attempt while the row is still
'running'. A duplicated or redelivered task therefore finds nothing to claim, and a worker whose lease was
reclaimed by the sweeper cannot overwrite the newer attempt's result.

Fair order: the database decides the order, the broker only wakes workers. Every queued submission still sends
one task, but a task claims the fairest queued submission of its queue (server.submissions.limits.fair_order),
not necessarily the one it names. There are as many tasks as queued submissions, so every one is claimed; a
task that finds nothing left to claim does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from graders.harness import GradeReport, grade
from graders.package import AssignmentPackage, extract_bundle, load_package, runner_argv, runner_files
from graders.protocol import Channel, ProtocolError
from graders.static_check import check_package_sources, static_check_report
from server import queue
from server.assignments.models import GraderBundle
from server.db import utcnow
from server.settings import Settings
from server.submissions import archive, limits
from server.submissions.models import Blob, GradingRun, Submission, SubmissionStatus
from server.submissions.sweeper import GAVE_UP_MESSAGE
from worker.sandbox import Limits, Sandbox, SandboxResult, SandboxSpec

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
# What a grading run was for, by the lane its submission waited in.
RUN_PURPOSES = {0: "grade", 1: "regrade", 2: "remeasure"}
# A claim lost to another worker is retried with the next fairest submission; past this many losses in a row the
# task gives up (the submission it named stays queued, and the sweeper sends it again).
MAX_CLAIM_RACES = 50
# After a failed run (time out, protocol violation, exit), how long the sandbox may take to exit by itself
# before it is killed: enough to collect an exit status or an out-of-memory kill, not to wait on stuck code.
FAILED_GRACE_SECONDS = 1.0


@dataclass
class GradingContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    sandbox: Sandbox
    worker_id: str


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(*, session: Session, submission_id: int, worker_id: str, lease_seconds: float) -> int | None:
    """Atomically move a queued submission to running; returns the new attempt number, or None."""
    now = utcnow()
    changed = session.execute(
        update(Submission)
        .where(Submission.id == submission_id, Submission.status == SubmissionStatus.queued)
        .values(
            status=SubmissionStatus.running,
            attempt=Submission.attempt + 1,
            worker=worker_id,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            progress_done=0,
            current_test=None,
            status_message=None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if not changed:
        return None
    submission = session.get(Submission, submission_id)
    assert submission is not None
    session.refresh(submission)
    return submission.attempt


@dataclass(frozen=True)
class Claimed:
    submission_id: int
    attempt: int
    # The task was sent for a longer grading than the one it claimed, and a submission that needs the longer
    # time is still waiting: send the task again, or that one may be left to the sweeper (see claim_fairest).
    wake_again: bool = False


def claim_fairest(
    *, session: Session, submission_id: int, worker_id: str, lease_seconds: float
) -> Claimed | None:
    """Claim the fairest queued submission on the queue of the one a task names, or None if none is left.

    A task's Celery time limits were set for the submission it names, so only submissions whose grader's time
    limit fits are candidates. That keeps every waiting submission within reach of some task as long as a task
    that claims a shorter grading than it was sent for is sent again when a longer one is waiting
    (``wake_again``): then for every time limit there are at least as many tasks allowing it as submissions
    needing it. On PostgreSQL the candidate row is locked and rows other workers are claiming are skipped; on
    SQLite one writer at a time decides. Either way the conditional UPDATE in :func:`claim` is what makes the
    claim atomic: a race lost to another worker moves on to the next candidate.
    """
    named = session.execute(
        select(Submission.queue, GraderBundle.manifest)
        .join(GraderBundle, GraderBundle.id == Submission.bundle_id)
        .where(Submission.id == submission_id)
    ).one_or_none()
    if named is None:
        session.rollback()
        return None
    queue_name, named_manifest = named
    budget = float(named_manifest["time_limit_s"])
    time_limits = {
        bundle_id: float(manifest["time_limit_s"])
        for bundle_id, manifest in session.execute(
            select(GraderBundle.id, GraderBundle.manifest).where(
                GraderBundle.id.in_(
                    select(Submission.bundle_id).where(
                        Submission.status == SubmissionStatus.queued, Submission.queue == queue_name
                    )
                )
            )
        )
    }
    fitting = [bundle_id for bundle_id, limit in time_limits.items() if limit <= budget]
    candidates = (
        limits.fair_order(queue=queue_name)
        .add_columns(Submission.bundle_id)
        .where(Submission.bundle_id.in_(fitting))
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True, of=Submission)
    for _ in range(MAX_CLAIM_RACES):
        row = session.execute(candidates).first()
        if row is None:
            session.rollback()
            return None
        chosen, bundle_id = row
        attempt = claim(
            session=session, submission_id=chosen, worker_id=worker_id, lease_seconds=lease_seconds
        )
        if attempt is None:
            continue
        longer = [other for other, limit in time_limits.items() if time_limits[bundle_id] < limit <= budget]
        wake_again = bool(longer) and bool(
            session.scalar(
                select(Submission.id)
                .where(
                    Submission.status == SubmissionStatus.queued,
                    Submission.queue == queue_name,
                    Submission.bundle_id.in_(longer),
                )
                .limit(1)
            )
        )
        return Claimed(chosen, attempt, wake_again)
    log.warning(
        "lost %s claims in a row on queue %s; leaving it to other workers", MAX_CLAIM_RACES, queue_name
    )
    return None


def _guarded(submission_id: int, attempt: int) -> Any:
    return update(Submission).where(
        Submission.id == submission_id,
        Submission.status == SubmissionStatus.running,
        Submission.attempt == attempt,
    )


class LeaseKeeper(threading.Thread):
    """Renews the claim's lease while grading runs, so only a dead worker's submissions are reclaimed."""

    def __init__(self, ctx: GradingContext, submission_id: int, attempt: int) -> None:
        super().__init__(name=f"lease-{submission_id}", daemon=True)
        self._ctx = ctx
        self._submission_id = submission_id
        self._attempt = attempt
        self._stop_event = threading.Event()
        self.lost = False

    def run(self) -> None:
        lease = self._ctx.settings.worker.lease_seconds
        while not self._stop_event.wait(lease / 3):
            try:
                with self._ctx.session_factory() as session:
                    changed = session.execute(
                        _guarded(self._submission_id, self._attempt)
                        .values(lease_expires_at=utcnow() + timedelta(seconds=lease))
                        .execution_options(synchronize_session=False)
                    ).rowcount  # type: ignore[attr-defined]
                    session.commit()
                if not changed:
                    self.lost = True
                    return
            except Exception:
                log.exception("could not renew the lease of submission %s", self._submission_id)

    def stop(self) -> None:
        self._stop_event.set()


def ensure_bundle(bundle: GraderBundle, cache_dir: Path) -> Path:
    """The bundle's package directory, extracted once per sha256 and shared by later gradings."""
    target = cache_dir / bundle.sha256
    if target.is_dir():
        return next(path for path in target.iterdir() if path.is_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.sha256[:12]}-", dir=cache_dir))
    try:
        package_dir = extract_bundle(bundle.data, staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # only a concurrent worker that finished first is fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / package_dir.name


def environment_info(sandbox: Sandbox) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    hardware: dict[str, Any] = {
        "label": "cpu",
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
    }
    if torch.cuda.is_available():
        hardware["label"] = torch.cuda.get_device_name(0)
    software: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "sandbox": sandbox.name,
    }
    try:
        import triton

        software["triton"] = triton.__version__
    except ImportError:
        software["triton"] = None
    return hardware, software


def sandbox_limits(package: AssignmentPackage, settings: Settings) -> Limits:
    return Limits(
        wall_seconds=package.time_limit_s,
        cpu_seconds=max(1, math.ceil(package.time_limit_s * 2)),
        memory_bytes=package.memory_mb * 2**20,
        max_processes=package.max_processes,
        log_bytes=settings.log_bytes,
    )


@dataclass
class Outcome:
    report: GradeReport
    sandbox_result: SandboxResult | None
    seed: int
    started_at: datetime


def run_grading(
    *,
    ctx: GradingContext,
    package: AssignmentPackage,
    archive_blob: bytes,
    on_progress: Callable[[int, int, str], None],
) -> Outcome:
    started_at = utcnow()
    scratch_root = ctx.settings.scratch_path
    scratch_root.mkdir(parents=True, exist_ok=True)
    # The sandbox uid must traverse (not list) these to reach its own workdir; nothing in them is readable.
    os.chmod(scratch_root, 0o711)  # noqa: S103
    job = Path(tempfile.mkdtemp(prefix="job-", dir=scratch_root))
    try:
        os.chmod(job, 0o711)  # noqa: S103
        workdir = job / "work"
        runner_dir = job / "runner"
        workdir.mkdir()
        runner_dir.mkdir()
        archive.unpack(archive_blob, workdir)
        # The seed decides every hidden input; it stays on this side of the trust boundary.
        seed = secrets.randbits(63)
        # The assignment's static rules (e.g. "write the kernel, do not call SDPA") are checked before any
        # student code runs; a violation fails the submission with the rules it broke.
        violations = check_package_sources(package, workdir)
        if violations:
            report = static_check_report(package, violations)
            return Outcome(report=report, sandbox_result=None, seed=seed, started_at=started_at)
        for source in runner_files():
            shutil.copyfile(source, runner_dir / source.name)
            os.chmod(runner_dir / source.name, 0o644)
        os.chmod(runner_dir, 0o755)  # noqa: S103 - the runner stub is public code, read by the sandbox uid
        ctx.sandbox.prepare_workdir(workdir)
        # Where the grader puts its own files holding each checked call's inputs, which the runner maps (at
        # /work/.inputs): it judges mutation from them. It creates the directory at the first such call.
        inputs_dir = workdir / ".inputs"
        spec = SandboxSpec(
            argv=runner_argv(package),
            workdir=workdir,
            ro_binds={runner_dir: "/runner"},
            limits=sandbox_limits(package, ctx.settings),
            gpu=package.queue == "gpu",
        )
        with ctx.sandbox.run(spec) as session:
            channel = Channel(session.stdout, session.stdin, default_timeout=package.call_timeout_s)
            report = grade(package, channel, seed=seed, on_progress=on_progress, inputs_dir=inputs_dir)
            # If the sandbox is gone, stuck, or broke the protocol, the send fails (the channel may refuse any
            # further use): its exit status below says why. None of that is an infrastructure fault.
            with contextlib.suppress(OSError, ValueError, EOFError, ProtocolError):
                channel.send({"op": "shutdown"})
            # A run that failed has nothing more to say: do not give stuck code the whole grace period.
            grace = SHUTDOWN_GRACE_SECONDS if report.status == "graded" else FAILED_GRACE_SECONDS
            try:
                result = session.wait(timeout=grace)
            except TimeoutError:
                session.kill()
                result = session.wait()
        if report.status == "failed" and (result.timed_out or result.oom_killed):
            report.failure_reason = f"Your program {result.describe()}. {report.failure_reason or ''}".strip()
        return Outcome(report=report, sandbox_result=result, seed=seed, started_at=started_at)
    finally:
        shutil.rmtree(job, ignore_errors=True)


def record(
    *,
    session: Session,
    ctx: GradingContext,
    submission: Submission,
    attempt: int,
    outcome: Outcome,
    bundle: GraderBundle,
) -> bool:
    """Store the run and finish the submission in one transaction, if this attempt still holds it."""
    report = outcome.report
    status = SubmissionStatus.graded if report.status == "graded" else SubmissionStatus.failed
    result = outcome.sandbox_result
    hardware, software = environment_info(ctx.sandbox)
    log_text = result.log.decode("utf-8", errors="replace") if result else ""
    finished: dict[str, Any] = {
        "finished_at": utcnow(),
        "lease_expires_at": None,
        "progress_done": len(report.tests),
        "current_test": None,
    }
    if RUN_PURPOSES.get(submission.lane) == "remeasure":
        # A leaderboard re-measurement only adds a run to rank by: the grade the submission earned stands, even if
        # the new seed now trips a test (the board, not the grade, reflects that).
        finished["status"] = SubmissionStatus.graded
    else:
        finished.update(
            status=status,
            score=report.score,
            max_score=report.max_score,
            status_message=report.failure_reason,
        )
    changed = session.execute(
        _guarded(submission.id, attempt).values(**finished).execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not changed:
        session.rollback()
        log.warning("submission %s attempt %s lost its claim; result discarded", submission.id, attempt)
        return False
    payload = report.student_json()
    session.add(
        GradingRun(
            submission_id=submission.id,
            attempt=attempt,
            status=status,
            score=report.score,
            max_score=report.max_score,
            results=payload["tests"],
            metrics=report.metrics,
            failure_reason=report.failure_reason,
            failure_detail=report.failure_detail,
            notes=report.notes,
            flags=report.flags,
            hardware_class=report.hardware_class,
            log=log_text,
            log_truncated=bool(result and result.log_truncated),
            sandbox=(
                {
                    "exit_code": result.exit_code,
                    "signal": result.signal,
                    "timed_out": result.timed_out,
                    "oom_killed": result.oom_killed,
                    "wall_seconds": round(result.wall_seconds, 3),
                    "cpu_seconds": result.cpu_seconds,
                    "max_rss_bytes": result.max_rss_bytes,
                }
                if result
                else {}
            ),
            worker=ctx.worker_id,
            hardware=hardware,
            software=software,
            bundle_id=bundle.id,
            bundle_sha256=bundle.sha256,
            seed=str(outcome.seed),
            started_at=outcome.started_at,
            purpose=RUN_PURPOSES.get(submission.lane, "grade"),
        )
    )
    session.commit()
    return True


def release_after_fault(*, ctx: GradingContext, submission: Submission, attempt: int) -> str:
    """An infrastructure fault: try again on another attempt, or give up with 'error' after the last."""
    with ctx.session_factory() as session:
        if attempt >= ctx.settings.worker.max_attempts:
            values: dict[str, Any] = {
                "status": SubmissionStatus.error,
                "finished_at": utcnow(),
                "status_message": GAVE_UP_MESSAGE,
                "lease_expires_at": None,
            }
            outcome = "error"
        else:
            values = {
                "status": SubmissionStatus.queued,
                "enqueued_at": utcnow(),
                "lease_expires_at": None,
                "worker": None,
            }
            outcome = "retry"
        changed = session.execute(
            _guarded(submission.id, attempt).values(**values).execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    if changed and outcome == "retry":
        queue.enqueue_grading(
            submission.id,
            queue=submission.queue,
            time_limit_s=float(submission.assignment.bundle.manifest["time_limit_s"]),
        )
    return outcome


def _send_again(session: Session, message_id: int) -> None:
    """The task of ``message_id`` once more, with the same queue and time limits."""
    named = session.get(Submission, message_id)
    bundle = session.get(GraderBundle, named.bundle_id) if named is not None else None
    if named is not None and bundle is not None:
        queue.enqueue_grading(
            message_id, queue=named.queue, time_limit_s=float(bundle.manifest["time_limit_s"])
        )


def grade_submission(submission_id: int, ctx: GradingContext) -> str:
    """Grade one queued submission: with fair order the fairest of the queue that ``submission_id`` waits in,
    otherwise ``submission_id`` itself. Returns what happened: graded, failed, skipped, retry, error."""
    message_id = submission_id
    with ctx.session_factory() as session:
        claimed: Claimed | None
        if ctx.settings.worker.fair_order:
            claimed = claim_fairest(
                session=session,
                submission_id=message_id,
                worker_id=ctx.worker_id,
                lease_seconds=ctx.settings.worker.lease_seconds,
            )
        else:
            attempt = claim(
                session=session,
                submission_id=message_id,
                worker_id=ctx.worker_id,
                lease_seconds=ctx.settings.worker.lease_seconds,
            )
            claimed = None if attempt is None else Claimed(message_id, attempt)
        if claimed is None:
            log.info("nothing queued for the task of submission %s; nothing to do", message_id)
            return "skipped"
        if claimed.submission_id != message_id:
            log.info(
                "the task of submission %s claimed submission %s (fair order)",
                message_id,
                claimed.submission_id,
            )
        if claimed.wake_again:
            _send_again(session, message_id)
        submission_id, attempt = claimed.submission_id, claimed.attempt
        submission = session.get(Submission, submission_id)
        assert submission is not None
        bundle = session.get(GraderBundle, submission.bundle_id)
        blob = session.get(Blob, submission.archive_sha256)
        assert bundle is not None and blob is not None
        keeper = LeaseKeeper(ctx, submission_id, attempt)
        keeper.start()
        try:
            package = load_package(ensure_bundle(bundle, ctx.settings.bundle_cache_path))

            def on_progress(done: int, total: int, current: str) -> None:
                with ctx.session_factory() as progress_session:
                    progress_session.execute(
                        _guarded(submission_id, attempt)
                        .values(progress_done=done, progress_total=total, current_test=current)
                        .execution_options(synchronize_session=False)
                    )
                    progress_session.commit()

            outcome = run_grading(ctx=ctx, package=package, archive_blob=blob.data, on_progress=on_progress)
        except Exception:
            log.exception("grading submission %s (attempt %s) failed on our side", submission_id, attempt)
            return release_after_fault(ctx=ctx, submission=submission, attempt=attempt)
        finally:
            keeper.stop()
        recorded = record(
            session=session, ctx=ctx, submission=submission, attempt=attempt, outcome=outcome, bundle=bundle
        )
        return outcome.report.status if recorded else "skipped"
