"""Similarity reports: which submissions are compared, reading them safely, and a report's lifecycle.

A report is requested by staff (``request_report``, in the request's transaction), computed in a background
thread of the server (``schedule`` -> ``run_report``, its own session) and read back page by page. What is
compared and how is in ``server.similarity.engine``; this module only feeds it.
"""

from __future__ import annotations

import enum
import io
import logging
import tempfile
import time
import zipfile
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from graders.package import PackageError, handout_zip
from server.assignments import service as assignments
from server.assignments.models import Assignment, GraderBundle, SimilarityReport
from server.audit import service as audit
from server.auth.models import User
from server.courses.models import Enrollment, Role
from server.db import utcnow
from server.errors import BadRequest, Conflict, NotFound
from server.policy import service as policy
from server.similarity import engine
from server.submissions import archive
from server.submissions.models import Blob, Submission, SubmissionStatus

log = logging.getLogger(__name__)


class Scope(enum.StrEnum):
    latest = "latest"  # each student's latest finished submission
    counted = (
        "counted"  # each student's submission that counts under the assignment's rule (latest/best/final)
    )
    all = "all"  # every finished submission (pairs of one student's own submissions are not compared)


class ReportStatus(enum.StrEnum):
    running = "running"
    done = "done"
    failed = "failed"


# A report is computed in seconds (bench/similarity_scale.py); one still 'running' after this was cut short
# by a server restart and is shown as failed, and a new one may be started.
STALE_AFTER = timedelta(hours=1)
MAX_SUBMISSIONS = 2000
# Only Python files are compared; larger files are generated or data, not code anyone wrote by hand.
MAX_PYTHON_FILE_BYTES = 512 * 2**10
MAX_PYTHON_BYTES_PER_SUBMISSION = 2 * 2**20
_FINISHED = [status for status in SubmissionStatus if status.finished]
_STAFF_ROLES = [Role.ta, Role.instructor]

# One report at a time per server process: the comparison is CPU-bound Python, and requests share the GIL.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="similarity")


def request_report(
    *, session: Session, assignment: Assignment, actor: User, scope: Scope, common_students: int | None
) -> SimilarityReport:
    """Record a new report as running (audit-logged); the caller commits, then ``schedule``s it.

    One report per assignment is computed at a time: the assignment's row is locked (PostgreSQL) while the
    running one is looked for, so two staff clicking at once start one report and get a conflict.
    """
    session.execute(select(Assignment.id).where(Assignment.id == assignment.id).with_for_update())
    running = session.scalar(
        select(SimilarityReport)
        .where(
            SimilarityReport.assignment_id == assignment.id,
            SimilarityReport.status == ReportStatus.running.value,
        )
        .order_by(SimilarityReport.id.desc())
        .limit(1)
    )
    if running is not None:
        if not is_stale(running):
            raise Conflict(
                f"A similarity report for {assignment.slug} is already being computed (started "
                f"{running.created_at:%Y-%m-%d %H:%M:%S} UTC); wait for it to finish.",
                code="similarity_running",
            )
        running.status = ReportStatus.failed.value
        running.error = stale_error()
        running.finished_at = utcnow()
    count = _count_selected(session=session, assignment=assignment, scope=scope)
    if count > MAX_SUBMISSIONS:
        raise BadRequest(
            f"{count} submissions would be compared; a report compares at most {MAX_SUBMISSIONS}. "
            "Compare each student's latest submission instead (scope 'latest').",
            code="too_many_submissions",
        )
    report = SimilarityReport(
        assignment_id=assignment.id,
        status=ReportStatus.running.value,
        requested_by_id=actor.id,
        result={"scope": scope.value, "requested_common_students": common_students},
    )
    session.add(report)
    session.flush()
    audit.record(
        session=session,
        actor=actor,
        action="similarity.request",
        target_type="assignment",
        target_id=assignment.id,
        course_id=assignment.course_id,
        report_id=report.id,
        scope=scope.value,
        common_students=common_students,
        submissions=count,
    )
    return report


def schedule(*, session_factory: sessionmaker[Session], report_id: int) -> Future[None]:
    """Compute the (committed) report in the background; the client polls ``latest_report``."""
    return _executor.submit(run_report, session_factory=session_factory, report_id=report_id)


def run_report(*, session_factory: sessionmaker[Session], report_id: int) -> None:
    """Compute a running report and store its result, or why it failed. Safe to call twice."""
    with session_factory() as session:
        report = session.get(SimilarityReport, report_id)
        if report is None or report.status != ReportStatus.running.value:
            return
        started = time.perf_counter()
        try:
            result = build_result(session=session, report=report)
        except Exception as exc:
            log.exception("similarity report %s failed", report_id)
            session.rollback()
            report.status = ReportStatus.failed.value
            report.error = f"The report could not be computed: {type(exc).__name__}: {exc}"
        else:
            result["duration_s"] = round(time.perf_counter() - started, 3)
            report.result = result
            report.status = ReportStatus.done.value
        report.finished_at = utcnow()
        session.commit()


def is_stale(report: SimilarityReport) -> bool:
    return report.status == ReportStatus.running.value and utcnow() - report.created_at > STALE_AFTER


def stale_error() -> str:
    return "The report was interrupted (the server stopped while computing it). Start a new one."


def latest_report(*, session: Session, assignment: Assignment, report_id: int | None) -> SimilarityReport:
    """The assignment's newest report, or the one asked for."""
    query = select(SimilarityReport).where(SimilarityReport.assignment_id == assignment.id)
    if report_id is not None:
        query = query.where(SimilarityReport.id == report_id)
    report = session.scalar(query.order_by(SimilarityReport.id.desc()).limit(1))
    if report is None:
        if report_id is not None:
            raise NotFound(f"There is no similarity report {report_id} for {assignment.slug}.")
        raise NotFound(
            f"No similarity report has been made for {assignment.slug} yet; start one with POST.",
            code="no_report",
        )
    return report


@dataclass(frozen=True)
class _Read:
    sources: list[engine.CodeSubmission]
    skipped: list[dict[str, Any]]


def build_result(*, session: Session, report: SimilarityReport) -> dict[str, Any]:
    """Select, read and compare the submissions of the report's assignment."""
    assignment = session.get(Assignment, report.assignment_id)
    if assignment is None:
        raise NotFound("The assignment of this report no longer exists.")
    scope = Scope(report.result.get("scope", Scope.latest.value))
    requested = report.result.get("requested_common_students")
    started = time.perf_counter()
    selected = _selected(session=session, assignment=assignment, scope=scope)
    read = _read_submissions(session=session, submissions=selected)
    handouts, handout_problems = _handout_sources(
        session=session, assignment=assignment, bundle_ids={s.bundle_id for s in selected}
    )
    reading = time.perf_counter() - started
    session.commit()  # nothing to write yet: ends the read transaction before the long comparison
    students = len({source.user_id for source in read.sources})
    common_students = engine.common_threshold(students, requested)
    compared = engine.compare(
        read.sources, boilerplate=engine.boilerplate_hashes(handouts), common_students=common_students
    )
    comparing = time.perf_counter() - started - reading
    return {
        "scope": scope.value,
        "requested_common_students": requested,
        "parameters": {
            "language": "python",
            "noise_tokens": engine.NOISE_TOKENS,
            "common_students": common_students,
            "handout_files": len(handouts),
        },
        "note": _note(students, read.skipped),
        "skipped": read.skipped,
        "handout_problems": handout_problems,
        "timings": {"reading_s": round(reading, 3), "comparing_s": round(comparing, 3)},
        **compared,
    }


def _note(students: int, skipped: list[dict[str, Any]]) -> str | None:
    if students >= 2:
        return None
    if students == 1:
        return "Only one student has Python code to compare, so there are no pairs."
    if skipped:
        return "No submission had Python code that could be compared (see skipped)."
    return "There are no finished student submissions to compare yet."


def _selection(assignment: Assignment) -> Any:
    staff = select(Enrollment.user_id).where(
        Enrollment.course_id == assignment.course_id, Enrollment.role.in_(_STAFF_ROLES)
    )
    return select(Submission).where(
        Submission.assignment_id == assignment.id,
        Submission.status.in_(_FINISHED),
        Submission.user_id.not_in(staff),
    )


def _count_selected(*, session: Session, assignment: Assignment, scope: Scope) -> int:
    """How many submissions the report would compare (for 'counted', at most this many)."""
    selection = _selection(assignment).subquery()
    counted = selection.c.id if scope is Scope.all else selection.c.user_id
    return session.scalar(select(func.count(func.distinct(counted)))) or 0


def _selected(*, session: Session, assignment: Assignment, scope: Scope) -> list[Submission]:
    """Students' finished submissions: the latest (or counted) one of each, or all (one per distinct archive)."""
    if scope is Scope.counted:
        counted = policy.counted_submissions(session=session, assignment=assignment)
        return [counted[user_id] for user_id in sorted(counted)]
    rows = session.scalars(
        _selection(assignment).order_by(Submission.user_id, Submission.queued_at.desc(), Submission.id.desc())
    )
    chosen: list[Submission] = []
    seen: set[tuple[int, str]] = set()
    for submission in rows:
        key = (submission.user_id, "" if scope is Scope.latest else submission.archive_sha256)
        if key not in seen:
            seen.add(key)
            chosen.append(submission)
    return chosen


def _read_submissions(*, session: Session, submissions: list[Submission]) -> _Read:
    """The Python files of each submission; what could not be read is listed with the reason."""
    policies: dict[int, archive.UploadPolicy] = {}
    sources: list[engine.CodeSubmission] = []
    skipped: list[dict[str, Any]] = []
    for submission in submissions:
        if submission.bundle_id not in policies:
            policies[submission.bundle_id] = _stored_policy(session=session, bundle_id=submission.bundle_id)
        blob = session.scalar(select(Blob.data).where(Blob.sha256 == submission.archive_sha256))
        problems: list[tuple[str | None, str]] = []
        files: list[engine.SourceFile] = []
        if blob is None:
            problems.append((None, "Its archive is missing from the database."))
        else:
            try:
                files = _python_files(blob, policies[submission.bundle_id], problems)
            except (archive.ArchiveError, OSError) as exc:
                problems.append((None, f"Its archive could not be read: {exc}"))
        if not files and not problems:
            problems.append((None, "It contains no Python files."))
        skipped.extend(
            {
                "submission_id": submission.id,
                "student": submission.user.username,
                "file": file,
                "reason": reason,
            }
            for file, reason in problems
        )
        if files:
            sources.append(
                engine.CodeSubmission(
                    submission_id=submission.id,
                    user_id=submission.user_id,
                    student=submission.user.username,
                    submitted_at=submission.queued_at,
                    files=tuple(files),
                )
            )
    return _Read(sources, skipped)


def _stored_policy(*, session: Session, bundle_id: int) -> archive.UploadPolicy:
    """The limits the submission was uploaded under, from its own bundle's manifest."""
    manifest = session.scalar(select(GraderBundle.manifest).where(GraderBundle.id == bundle_id)) or {}
    return assignments.upload_policy(
        manifest,
        max_request_bytes=int(manifest["max_upload_bytes"]),
        max_files=int(manifest["max_files"]),
    )


def _python_files(
    blob: bytes, policy: archive.UploadPolicy, problems: list[tuple[str | None, str]]
) -> list[engine.SourceFile]:
    """Unpack (checked again, as any stored blob is) into a scratch dir that is removed afterwards.

    Files that are not compared are added to ``problems`` as ``(name, reason)``.
    """
    files = []
    total = 0
    with tempfile.TemporaryDirectory(prefix="ag-similarity-") as scratch:
        for name in archive.unpack(blob, Path(scratch), policy):
            if not name.endswith(".py"):
                continue
            data = (Path(scratch) / name).read_bytes()
            if len(data) > MAX_PYTHON_FILE_BYTES:
                problems.append(
                    (name, f"{name} is larger than {MAX_PYTHON_FILE_BYTES // 2**10} KiB; not compared.")
                )
                continue
            if total + len(data) > MAX_PYTHON_BYTES_PER_SUBMISSION:
                problems.append(
                    (
                        name,
                        f"{name} was not compared: the submission's Python files add up to more than "
                        f"{MAX_PYTHON_BYTES_PER_SUBMISSION // 2**20} MiB.",
                    )
                )
                continue
            total += len(data)
            text = engine.normalise_source(data.decode("utf-8", errors="replace"))
            files.append(engine.SourceFile(name, text))
    return files


def _handout_sources(
    *, session: Session, assignment: Assignment, bundle_ids: Iterable[int]
) -> tuple[list[str], list[str]]:
    """The Python files of the handouts of the current bundle and of every bundle a submission was made under."""
    sources: list[str] = []
    problems: list[str] = []
    for bundle_id in sorted({assignment.bundle_id, *bundle_ids}):
        bundle = session.get(GraderBundle, bundle_id)
        if bundle is None:
            continue
        try:
            zipped = handout_zip(bundle.data, assignment.slug)
        except PackageError as exc:
            problems.append(
                f"The handout of version {bundle.version} could not be read ({exc}); not excluded."
            )
            continue
        with zipfile.ZipFile(io.BytesIO(zipped)) as handout:
            for info in handout.infolist():
                if PurePosixPath(info.filename).suffix == ".py" and info.file_size <= MAX_PYTHON_FILE_BYTES:
                    sources.append(handout.read(info).decode("utf-8", errors="replace"))
    return sources, problems
