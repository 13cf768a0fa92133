"""Creating submissions, finding them for the people allowed to see them, and presenting their results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from server import queue
from server.assignments import service as assignments
from server.assignments.models import Assignment
from server.assignments.service import AssignmentAccess
from server.auth.models import User
from server.courses import service as courses
from server.db import utcnow
from server.errors import BadRequest, Conflict, NotFound
from server.policy import service as policy
from server.submissions import archive, limits
from server.submissions.models import Blob, GradingRun, Submission, SubmissionStatus


def create(
    *,
    session: Session,
    user: User,
    access: AssignmentAccess,
    parts: Sequence[tuple[str, bytes]],
    max_request_bytes: int,
    max_files: int,
) -> Submission:
    """Validate an upload and record it as 'queued'. The caller commits, then enqueues."""
    assignment = access.assignment
    if not access.is_staff:
        reason = assignments.submission_window_error(assignment)
        if reason:
            raise Conflict(reason, code="not_accepting")
        _check_deadline(session=session, user=user, assignment=assignment)
    manifest = assignment.bundle.manifest
    policy = assignments.upload_policy(manifest, max_request_bytes=max_request_bytes, max_files=max_files)
    try:
        files = archive.collect_upload(parts, policy)
    except archive.ArchiveError as exc:
        raise BadRequest(str(exc), code=exc.code) from exc
    now = utcnow()
    _check_contents(files, manifest)
    limits.take(session=session, access=access, user=user, now=now)
    data = archive.pack(files)
    sha256 = archive.sha256_hex(data)
    if session.get(Blob, sha256) is None:
        session.add(Blob(sha256=sha256, size=len(data), data=data))
    submission = Submission(
        assignment_id=assignment.id,
        user_id=user.id,
        archive_sha256=sha256,
        file_names=sorted(files),
        bundle_id=assignment.bundle_id,
        queue=assignment.queue,
        status=SubmissionStatus.queued,
        submitted_at=now,
        queued_at=now,
        enqueued_at=now,
    )
    if is_manual(manifest):
        submission.status = SubmissionStatus.received
        submission.enqueued_at = None
        submission.max_score = float(manifest["points"])
        submission.status_message = "Received. The course staff grade it by rubric after the deadline."
    session.add(submission)
    session.flush()
    return submission


def submit_and_enqueue(
    *,
    session: Session,
    user: User,
    access: AssignmentAccess,
    parts: Sequence[tuple[str, bytes]],
    max_request_bytes: int,
    max_files: int,
) -> Submission:
    """Record an upload (see ``create``) and commit it; then, unless the staff grade it by rubric, send it to
    the workers. The one commit of a submit is here because the task may only go after it: a worker never sees
    a task for a row it cannot read, and if the broker is down the row stays 'queued' for the sweeper to send.

    On a refusal nothing is committed; the caller rolls back.
    """
    submission = create(
        session=session,
        user=user,
        access=access,
        parts=parts,
        max_request_bytes=max_request_bytes,
        max_files=max_files,
    )
    session.commit()
    manifest = access.assignment.bundle.manifest
    if not is_manual(manifest):
        queue.enqueue_grading(
            submission.id, queue=submission.queue, time_limit_s=float(manifest["time_limit_s"])
        )
    return submission


def is_manual(manifest: dict[str, Any]) -> bool:
    """Whether the assignment is graded by the staff with a rubric rather than by a worker."""
    return manifest.get("grading") == "manual"


def _check_contents(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
    """Files every submission must have, and files that must be what their name says."""
    missing = [name for name in manifest.get("required_files") or [] if name not in files]
    if missing:
        raise BadRequest(
            f"The upload is missing {', '.join(missing)}, which this assignment requires.",
            code="missing_files",
        )
    for name, data in files.items():
        if name.lower().endswith(".pdf") and not data.startswith(b"%PDF-"):
            raise BadRequest(f"{name} is not a PDF file (it does not start with %PDF-).", code="not_a_pdf")


def visible_submission(*, session: Session, user: User, submission_id: int) -> tuple[Submission, bool]:
    """The submission and whether the viewer is staff, if the viewer owns it or teaches its course.

    Someone else's submission answers exactly like a missing one, so ids cannot be probed.
    """
    submission = session.get(Submission, submission_id)
    if submission is not None:
        if submission.user_id == user.id:
            role = courses.role_in(session=session, user=user, course=submission.assignment.course)
            return submission, bool(role and role.is_staff)
        role = courses.role_in(session=session, user=user, course=submission.assignment.course)
        if role is not None and role.is_staff:
            return submission, True
    raise NotFound(f"There is no submission {submission_id} that you can see.")


def list_for_user(*, session: Session, user: User, assignment: Assignment | None) -> list[Submission]:
    query = select(Submission).where(Submission.user_id == user.id)
    if assignment is not None:
        query = query.where(Submission.assignment_id == assignment.id)
    return list(session.scalars(query.order_by(Submission.id.desc()).limit(500)))


def list_for_assignment(
    *,
    session: Session,
    assignment: Assignment,
    status: SubmissionStatus | None,
    username: str | None,
    offset: int,
    limit: int,
) -> tuple[int, list[Submission]]:
    query = select(Submission).where(Submission.assignment_id == assignment.id)
    if status is not None:
        query = query.where(Submission.status == status)
    if username:
        query = query.join(User, User.id == Submission.user_id).where(User.username == username)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Submission.id.desc()).offset(offset).limit(limit))
    return total, list(rows)


def queue_position(*, session: Session, submission: Submission) -> int | None:
    """1 for the next submission to be graded on its queue (in the workers' fair order); None once not queued."""
    if submission.status != SubmissionStatus.queued:
        return None
    return limits.fair_position(session=session, submission=submission)


def latest_run(*, session: Session, submission: Submission) -> GradingRun | None:
    return session.scalar(
        select(GradingRun).where(GradingRun.submission_id == submission.id).order_by(GradingRun.id.desc())
    )


@dataclass(frozen=True)
class Visibility:
    """What a viewer may see of a run's tests."""

    staff: bool
    after_due_open: bool
    reveal_hidden: bool

    def shows(self, visibility: str) -> bool:
        if self.staff or self.reveal_hidden or visibility == "visible":
            return True
        return visibility == "after_due" and self.after_due_open


def visibility_for(submission: Submission, *, staff: bool) -> Visibility:
    assignment = submission.assignment
    due = assignment.due_at
    return Visibility(
        staff=staff,
        after_due_open=due is not None and utcnow() >= due,
        reveal_hidden=assignment.reveal_hidden,
    )


def present_results(run: GradingRun, visibility: Visibility) -> dict[str, Any]:
    """Per-test results as the viewer may see them: shown tests in full, the others only as counts."""
    shown: list[dict[str, Any]] = []
    hidden = {"count": 0, "passed": 0, "score": 0.0, "max_score": 0.0}
    for test in run.results:
        if visibility.shows(str(test.get("visibility", "hidden"))):
            shown.append(test)
        else:
            hidden["count"] += 1
            hidden["passed"] += 1 if test.get("passed") else 0
            hidden["score"] += float(test.get("score", 0.0))
            hidden["max_score"] += float(test.get("max_score", 0.0))
    return {"tests": shown, "hidden": hidden}


def status_snapshot(*, session: Session, submission: Submission) -> dict[str, Any]:
    """The live part of a submission, as streamed to the browser and the CLI."""
    return {
        "id": submission.id,
        "status": submission.status.value,
        "queue_position": queue_position(session=session, submission=submission),
        "progress": {
            "done": submission.progress_done,
            "total": submission.progress_total,
            "current_test": submission.current_test,
        },
        "score": submission.score,
        "max_score": submission.max_score,
        "status_message": submission.status_message,
        "started_at": submission.started_at.isoformat() if submission.started_at else None,
        "finished_at": submission.finished_at.isoformat() if submission.finished_at else None,
    }


def requeue(*, session: Session, submission: Submission) -> bool:
    """Put a finished or stuck submission back in the queue (staff regrade). The caller commits and enqueues."""
    result = session.execute(
        update(Submission)
        .where(
            Submission.id == submission.id,
            Submission.status.in_([s for s in SubmissionStatus if s.finished]),
        )
        .values(
            status=SubmissionStatus.queued,
            bundle_id=submission.assignment.bundle_id,
            queued_at=utcnow(),
            enqueued_at=utcnow(),
            lease_expires_at=None,
            progress_done=0,
            current_test=None,
            status_message=None,
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(submission)
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _check_deadline(*, session: Session, user: User, assignment: Assignment) -> None:
    """Refuse a submission that could no longer count under the late policy (the student's own deadline)."""
    grade = policy.student_grade(session=session, assignment=assignment, user=user)
    if grade.accepting_until is not None and utcnow() > grade.accepting_until:
        late_rule = policy.policy_of(assignment).describe()
        deadline = policy.local_text(grade.deadline, assignment.course)
        until = policy.local_text(grade.accepting_until, assignment.course)
        raise Conflict(
            f"Your deadline was {deadline}; submissions stopped counting at {until}. {late_rule}",
            code="past_deadline",
        )
