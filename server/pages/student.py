"""Student pages: the course dashboard, an assignment (README, handout, upload, history), a submission that is
followed live and then shows its results and files, and the assignment's leaderboard with a chart.

The pages call the same services and loaders as the API, so a page shows exactly what the API would answer:
someone else's submission is "not found", a hidden test is a count, another student is an alias or pseudonym.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server.assignments import service as assignments
from server.assignments.service import AssignmentAccess
from server.auth.models import User
from server.db import utcnow
from server.deps import SessionDep, SettingsDep
from server.errors import DomainError, NotFound, TooManyRequests
from server.leaderboard import service as leaderboard
from server.pages import i18n
from server.pages import student_views as views
from server.pages.deps import OptionalPageUser, PageUser, check_form_csrf
from server.pages.render import render
from server.policy import service as policy
from server.settings import Settings
from server.submissions import service as submissions
from server.submissions.archive import ErrorCode as ArchiveErrorCode
from server.submissions.models import Submission
from server.submissions.router import read_parts

router = APIRouter(include_in_schema=False)

# Refusals the upload form explains in the viewer's language (the service's own sentence follows as detail):
# the archive's own, and those of the submission service.
UPLOAD_ERROR_CODES = frozenset(get_args(ArchiveErrorCode)) | {
    "missing_files",
    "not_a_pdf",
    "not_accepting",
    "past_deadline",
    "rate_limited",
    "too_many_queued",
}
POLL_STOP = 286  # htmx stops polling an element whose request is answered with this status


def _translator(request: Request, user: User) -> i18n.Translate:
    return i18n.translator(i18n.negotiate(request, user))


def _page(
    request: Request, template: str, *, user: User, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return render(
        request,
        template,
        user=user,
        status_code=status_code,
        local_text=policy.local_text,
        **context,
    )


# -- dashboard -----------------------------------------------------------------------------------------------


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, session: SessionDep, user: PageUser) -> Response:
    t = _translator(request, user)
    return _page(
        request,
        "student/dashboard.html",
        user=user,
        title=t("student.dashboard.title"),
        courses=views.dashboard(session, user, t),
    )


# -- an assignment -------------------------------------------------------------------------------------------


def _assignment_page(
    request: Request,
    session: Session,
    settings: Settings,
    user: User,
    access: AssignmentAccess,
    *,
    status_code: int = 200,
    upload_error: dict[str, Any] | None = None,
) -> HTMLResponse:
    t = _translator(request, user)
    assignment = access.assignment
    manifest = assignment.bundle.manifest
    now = utcnow()
    grade = policy.student_grade(session=session, assignment=assignment, user=user)
    counted = grade.counted
    late_policy = policy.policy_of(assignment)
    return _page(
        request,
        "student/assignment.html",
        user=user,
        status_code=status_code,
        title=assignment.title,
        access=access,
        assignment=assignment,
        course=assignment.course,
        manifest=manifest,
        manual=submissions.is_manual(manifest),
        readme=views.readme_html(manifest.get("readme") or ""),
        grade=grade,
        counted_rubric=views.rubric_rows(session, counted.submission) if counted is not None else [],
        counted_late=(
            views.lateness_text(t, counted.lateness)
            if counted is not None and counted.lateness.units_late
            else None
        ),
        policy_text=views.policy_text(t, late_policy),
        state=views.window_state(assignment, grade, now),
        accepting_reason=assignments.submission_window_error(assignment),
        budget=views.budget(session, access, user, t, now),
        rules=views.upload_rules(
            access, max_request_bytes=settings.uploads.max_request_bytes, max_files=settings.uploads.max_files
        ),
        history=views.history(session, user, access, t),
        tests=views.public_tests(access),
        rubric=manifest.get("rubric") or [],
        has_leaderboard=bool(manifest.get("leaderboard")) and assignment.leaderboard_enabled,
        handout_url=f"/api/courses/{assignment.course.slug}/assignments/{assignment.slug}/handout.zip",
        upload_error=upload_error,
    )


@router.get("/courses/{course}/assignments/{slug}", response_class=HTMLResponse)
def assignment_page(
    request: Request, course: str, slug: str, session: SessionDep, settings: SettingsDep, user: PageUser
) -> Response:
    access = assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    return _assignment_page(request, session, settings, user, access)


def _upload_error(t: i18n.Translate, error: DomainError) -> dict[str, Any]:
    code = error.code if error.code in UPLOAD_ERROR_CODES else "other"
    return {
        "code": code,
        "title": t(f"student.upload.error.{code}"),
        "detail": error.message,
        "retry_at": error.retry_at if isinstance(error, TooManyRequests) else None,
    }


@router.post("/courses/{course}/assignments/{slug}/submit", response_class=HTMLResponse)
async def submit(
    request: Request,
    course: str,
    slug: str,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    files: Annotated[list[UploadFile] | None, File()] = None,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """The upload form: on success to the submission's page; on a refusal the assignment page again, saying why."""
    check_form_csrf(request, csrf_token)
    access = await run_in_threadpool(
        assignments.get_for_user, session=session, user=user, course_slug=course, slug=slug
    )
    manifest = access.assignment.bundle.manifest
    limit = min(int(manifest["max_upload_bytes"]), settings.uploads.max_request_bytes)
    # A form sent with no file chosen still has one empty, nameless part.
    chosen = [upload for upload in files or [] if upload.filename]
    try:
        parts = await read_parts(chosen, limit)
        submission = await run_in_threadpool(
            submissions.submit_and_enqueue,
            session=session,
            user=user,
            access=access,
            parts=parts,
            max_request_bytes=settings.uploads.max_request_bytes,
            max_files=settings.uploads.max_files,
        )
    except DomainError as error:
        # Nothing of the upload is kept (nor a token taken from the student's budget).
        await run_in_threadpool(session.rollback)
        t = _translator(request, user)
        return await run_in_threadpool(
            _assignment_page,
            request,
            session,
            settings,
            user,
            access,
            status_code=error.status_code,
            upload_error=_upload_error(t, error),
        )
    return RedirectResponse(f"/submissions/{submission.id}", status_code=303)


# -- a submission --------------------------------------------------------------------------------------------


def _submission_context(
    session: Session, submission: Submission, *, staff: bool, t: i18n.Translate
) -> dict[str, Any]:
    live = views.live(session, submission, t)
    context: dict[str, Any] = {
        "submission": submission,
        "assignment": submission.assignment,
        "course": submission.assignment.course,
        "staff": staff,
        "live": live,
        "results": None,
    }
    if live.finished:
        context["results"] = views.results(session, submission, staff=staff, t=t)
    return context


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
def submission_page(request: Request, submission_id: int, session: SessionDep, user: PageUser) -> Response:
    submission, staff = submissions.visible_submission(
        session=session, user=user, submission_id=submission_id
    )
    t = _translator(request, user)
    shown, count = views.files(session, submission)
    return _page(
        request,
        "student/submission.html",
        user=user,
        title=t("student.submission.title", id=submission.id),
        files=shown,
        file_count=count,
        max_shown_bytes=views.MAX_SHOWN_BYTES,
        **_submission_context(session, submission, staff=staff, t=t),
    )


@router.get("/submissions/{submission_id}/status", response_class=HTMLResponse)
def submission_status(
    request: Request, submission_id: int, session: SessionDep, user: OptionalPageUser
) -> Response:
    """The live part of the submission page, polled by htmx every second; once finished, its results, with
    status 286 so that polling stops. A plain browser visit goes to the whole page."""
    page_url = f"/submissions/{submission_id}"
    if "hx-request" not in request.headers:
        return RedirectResponse(page_url, status_code=303)
    if user is None:
        # An expired session while polling: htmx takes the whole browser to the login page, then back.
        return Response(status_code=POLL_STOP, headers={"HX-Redirect": f"/login?next={page_url}"})
    submission, staff = submissions.visible_submission(
        session=session, user=user, submission_id=submission_id
    )
    context = _submission_context(session, submission, staff=staff, t=_translator(request, user))
    template = "student/_results.html" if context["live"].finished else "student/_live.html"
    status_code = POLL_STOP if context["live"].finished else 200
    return _page(request, template, user=user, status_code=status_code, **context)


# -- the leaderboard -----------------------------------------------------------------------------------------


@router.get("/courses/{course}/assignments/{slug}/leaderboard", response_class=HTMLResponse)
def leaderboard_page(
    request: Request,
    course: str,
    slug: str,
    session: SessionDep,
    settings: SettingsDep,
    user: PageUser,
    hardware: str | None = None,
) -> Response:
    access = assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    assignment = access.assignment
    spec = assignment.bundle.manifest.get("leaderboard") or {}
    if not spec or (not assignment.leaderboard_enabled and not access.is_staff):
        raise NotFound("This assignment has no leaderboard.")
    t = _translator(request, user)
    board = leaderboard.board(session=session, assignment=assignment, hardware=hardware or None)
    rows = views.board_rows(
        session,
        assignment,
        board,
        user,
        staff=access.is_staff,
        secret=settings.secret_key.get_secret_value(),
    )
    chart = views.chart(session, assignment, board, rows)
    chart.update(
        unit=spec.get("unit") or "",
        label=spec.get("label") or board.metric,
        you=t("student.board.you"),
        y_label=(
            t("student.board.chart_y", metric=board.metric, unit=spec["unit"])
            if spec.get("unit")
            else board.metric or ""
        ),
        x_label=t("student.board.chart_x"),
        empty=t("student.board.chart_empty"),
    )
    return _page(
        request,
        "student/leaderboard.html",
        user=user,
        title=t("student.board.title", title=assignment.title),
        access=access,
        assignment=assignment,
        course=assignment.course,
        spec=spec,
        board=board,
        rows=rows,
        mine=next((row for row in rows if row.mine), None),
        chart=chart,
    )
