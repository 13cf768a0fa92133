"""Submitting, following and reading submissions."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from server.assignments import service as assignments
from server.audit import service as audit
from server.db import get_session_factory, utcnow
from server.deps import CurrentUser, SessionDep, SettingsDep
from server.errors import BadRequest, Forbidden, PayloadTooLarge, TooManyRequests
from server.submissions import regrade as regrades
from server.submissions import service
from server.submissions.models import Blob, Submission, SubmissionStatus

router = APIRouter(prefix="/api", tags=["submissions"])

READ_CHUNK = 64 * 1024


class ProgressOut(BaseModel):
    done: int
    total: int
    current_test: str | None


class SubmissionOut(BaseModel):
    id: int
    course: str
    assignment: str
    username: str
    status: str
    status_message: str | None
    queue_position: int | None
    progress: ProgressOut
    score: float | None
    max_score: float | None
    attempt: int
    files: list[str]
    archive_sha256: str
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class HiddenSummary(BaseModel):
    count: int
    passed: int
    score: float
    max_score: float


class SubmissionDetailOut(SubmissionOut):
    tests: list[dict[str, Any]]
    hidden: HiddenSummary
    metrics: dict[str, float]
    failure_reason: str | None
    failure_detail: str | None
    notes: list[str]
    bundle_version: str | None
    staff: dict[str, Any] | None = None


class SubmissionPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[SubmissionOut]


class LogOut(BaseModel):
    log: str
    truncated: bool


def submission_out(session: SessionDep, submission: Submission) -> dict[str, Any]:
    return {
        **service.status_snapshot(session=session, submission=submission),
        "course": submission.assignment.course.slug,
        "assignment": submission.assignment.slug,
        "username": submission.user.username,
        "attempt": submission.attempt,
        "files": submission.file_names,
        "archive_sha256": submission.archive_sha256,
        "queued_at": submission.queued_at,
    }


async def read_parts(files: list[UploadFile], limit: int) -> list[tuple[str, bytes]]:
    """Read every uploaded file, refusing as soon as the total passes ``limit`` bytes."""
    parts: list[tuple[str, bytes]] = []
    total = 0
    for upload in files:
        chunks: list[bytes] = []
        while chunk := await upload.read(READ_CHUNK):
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(
                    f"The upload is larger than the {limit // 1024} KiB this assignment accepts.",
                    code="too_large",
                )
            chunks.append(chunk)
        parts.append((upload.filename or "", b"".join(chunks)))
    return parts


def too_many_requests(refused: TooManyRequests) -> JSONResponse:
    """429 with the plain reason, and when the next request is allowed: ISO UTC in the body, Retry-After."""
    body: dict[str, Any] = {"detail": refused.message, "code": refused.code, "next_allowed_at": None}
    headers = {}
    if refused.retry_at is not None:
        body["next_allowed_at"] = refused.retry_at.isoformat()
        headers["retry-after"] = str(max(1, math.ceil((refused.retry_at - utcnow()).total_seconds())))
    return JSONResponse(body, status_code=429, headers=headers)


@router.post(
    "/courses/{course}/assignments/{slug}/submissions",
    response_model=SubmissionOut,
    status_code=201,
    responses={
        429: {
            "description": "Fair use: over the rate limit (next_allowed_at and Retry-After say when the next "
            "submission is allowed) or too many submissions waiting at once"
        }
    },
)
async def submit(
    course: str,
    slug: str,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    files: Annotated[
        list[UploadFile] | None, File(description="source files, or one .zip / .tar.gz / .tgz")
    ] = None,
) -> dict[str, Any] | JSONResponse:
    access = await run_in_threadpool(
        assignments.get_for_user, session=session, user=user, course_slug=course, slug=slug
    )
    manifest = access.assignment.bundle.manifest
    limit = min(int(manifest["max_upload_bytes"]), settings.uploads.max_request_bytes)
    parts = await read_parts(files or [], limit)
    try:
        submission = await run_in_threadpool(
            service.submit_and_enqueue,
            session=session,
            user=user,
            access=access,
            parts=parts,
            max_request_bytes=settings.uploads.max_request_bytes,
            max_files=settings.uploads.max_files,
        )
    except TooManyRequests as refused:
        # Nothing of this upload is kept, and the bucket's lock is let go before the response goes out.
        await run_in_threadpool(session.rollback)
        return too_many_requests(refused)
    return submission_out(session, submission)


@router.get("/submissions/{submission_id}", response_model=SubmissionDetailOut)
def get_submission(submission_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    submission, staff = service.visible_submission(session=session, user=user, submission_id=submission_id)
    run = service.latest_run(session=session, submission=submission)
    detail: dict[str, Any] = {
        **submission_out(session, submission),
        "tests": [],
        "hidden": {"count": 0, "passed": 0, "score": 0.0, "max_score": 0.0},
        "metrics": {},
        "failure_reason": None,
        "failure_detail": None,
        "notes": [],
        "bundle_version": None,
    }
    if run is not None:
        detail.update(service.present_results(run, service.visibility_for(submission, staff=staff)))
        detail["metrics"] = run.metrics
        detail["failure_reason"] = run.failure_reason
        detail["failure_detail"] = run.failure_detail
        detail["notes"] = run.notes
        detail["bundle_version"] = run.bundle.version
        if staff:
            detail["staff"] = {
                "worker": run.worker,
                "hardware": run.hardware,
                "software": run.software,
                "sandbox": run.sandbox,
                "seed": run.seed,
                "flags": run.flags,
                "hardware_class": run.hardware_class,
                "bundle_sha256": run.bundle_sha256,
                "runs": len(submission.runs),
            }
    return detail


@router.get("/submissions/{submission_id}/log", response_model=LogOut)
def get_log(submission_id: int, session: SessionDep, user: CurrentUser) -> LogOut:
    submission, _ = service.visible_submission(session=session, user=user, submission_id=submission_id)
    run = service.latest_run(session=session, submission=submission)
    return LogOut(log=run.log if run else "", truncated=run.log_truncated if run else False)


@router.get("/submissions/{submission_id}/archive")
def get_archive(submission_id: int, session: SessionDep, user: CurrentUser) -> Response:
    """The submitted files as a .tar.gz, for their author and the course staff."""
    submission, _ = service.visible_submission(session=session, user=user, submission_id=submission_id)
    blob = session.get(Blob, submission.archive_sha256)
    assert blob is not None
    return Response(
        blob.data,
        media_type="application/gzip",
        headers={"content-disposition": f'attachment; filename="submission-{submission.id}.tar.gz"'},
    )


@router.get("/submissions/{submission_id}/events")
async def stream_events(submission_id: int, request: Request, session: SessionDep, user: CurrentUser) -> Any:
    """Server-sent events: one 'status' event per change until the submission is finished."""
    await run_in_threadpool(
        service.visible_submission, session=session, user=user, submission_id=submission_id
    )
    session.close()

    def snapshot() -> dict[str, Any]:
        with get_session_factory()() as poll_session:
            submission = poll_session.get(Submission, submission_id)
            assert submission is not None
            return service.status_snapshot(session=poll_session, submission=submission)

    async def events() -> AsyncIterator[str]:
        last: dict[str, Any] | None = None
        idle = 0.0
        while not await request.is_disconnected():
            current = await run_in_threadpool(snapshot)
            if current != last:
                yield f"event: status\ndata: {json.dumps(current)}\n\n"
                last = current
                idle = 0.0
                if SubmissionStatus(current["status"]).finished:
                    return
            elif idle >= 15:
                yield ": keep-alive\n\n"
                idle = 0.0
            await asyncio.sleep(0.5)
            idle += 0.5

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


@router.get("/me/submissions", response_model=list[SubmissionOut])
def my_submissions(
    session: SessionDep,
    user: CurrentUser,
    course: str | None = None,
    assignment: str | None = None,
) -> list[dict[str, Any]]:
    target = None
    if assignment is not None:
        if course is None:
            raise BadRequest("Give the course together with the assignment.", code="course_required")
        target = assignments.get_for_user(session=session, user=user, course_slug=course, slug=assignment)
    rows = service.list_for_user(session=session, user=user, assignment=target.assignment if target else None)
    return [submission_out(session, s) for s in rows]


@router.get("/courses/{course}/assignments/{slug}/submissions", response_model=SubmissionPage)
def assignment_submissions(
    course: str,
    slug: str,
    session: SessionDep,
    user: CurrentUser,
    status: SubmissionStatus | None = None,
    username: str | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    access = assignments.require_staff(
        assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    )
    total, rows = service.list_for_assignment(
        session=session,
        assignment=access.assignment,
        status=status,
        username=username,
        offset=offset,
        limit=limit,
    )
    return {
        "total": total,
        "offset": offset,
        "limit": limit,
        "items": [submission_out(session, s) for s in rows],
    }


@router.post("/submissions/{submission_id}/regrade", response_model=SubmissionOut)
def regrade(submission_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """Grade one submission again with the assignment's current grader (staff; it waits behind students)."""
    submission, staff = service.visible_submission(session=session, user=user, submission_id=submission_id)
    if not staff:
        raise Forbidden("Only the course's TAs and instructors can regrade.")
    regrades.regrade_one(session=session, submission=submission, actor=user)
    return submission_out(session, submission)


class RegradeIn(BaseModel):
    scope: regrades.Scope


class RegradeOut(BaseModel):
    scope: regrades.Scope
    requeued: int
    skipped_in_progress: int
    submission_ids: list[int]
    bundle_version: str
    bundle_sha256: str


@router.post("/courses/{course}/assignments/{slug}/regrade", response_model=RegradeOut)
def regrade_assignment(
    course: str, slug: str, body: RegradeIn, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    """Grade again, with the current grader, every submission ('all'), each student's counted one ('counted')
    or each submitter's latest ('latest'). Staff only. Regrades wait behind students' submissions; earlier runs
    stay in the history with their grader version, and score overrides stay as they are."""
    access = assignments.require_staff(
        assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    )
    assignment = access.assignment
    regrades.refuse_manual(assignment)
    chosen = regrades.targets(session=session, assignment=assignment, scope=body.scope)
    done = regrades.requeue(session=session, assignment=assignment, submission_ids=chosen, now=utcnow())
    audit.record(
        session=session,
        actor=user,
        action="assignment.regrade",
        target_type="assignment",
        target_id=assignment.id,
        course_id=assignment.course_id,
        scope=body.scope.value,
        requeued=len(done.requeued),
        skipped_in_progress=len(done.in_progress),
        bundle_sha256=assignment.bundle.sha256,
    )
    session.commit()
    regrades.send(assignment, done.requeued)
    return {
        "scope": body.scope,
        "requeued": len(done.requeued),
        "skipped_in_progress": len(done.in_progress),
        "submission_ids": done.requeued,
        "bundle_version": assignment.bundle.version,
        "bundle_sha256": assignment.bundle.sha256,
    }
