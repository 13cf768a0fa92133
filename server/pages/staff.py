"""Staff pages: the TAs' and instructors' side of the course.

TAs (and instructors): every submission of an assignment with filters and paging, a student's history, one
submission with its runs, a score override with a reason the student reads, rubric scores, a regrade; the
assignment's grades, charts and exports; the queue and the workers. Instructors also: a new assignment from a
grader package shipped with the server, its settings, publishing, the roster and its roles.

The pages call the same services and loaders as the API, so a page allows exactly what the API would: a student
gets the 403 page, someone outside the course a 404, and every form posts with the session's CSRF token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from graders.package import PackageError, load_package
from server import queue
from server.assignments import service as assignments
from server.assignments.models import Assignment
from server.audit import service as audit
from server.auth.models import User
from server.bootstrap import course_packages
from server.courses import service as courses
from server.courses.models import Course, Enrollment, Role
from server.db import utcnow
from server.deps import SessionDep
from server.errors import BadRequest, Conflict, DomainError, Forbidden, NotFound
from server.exports import service as exports
from server.pages import i18n
from server.pages import staff_views as views
from server.pages.deps import PageUser, check_form_csrf
from server.pages.render import environment, render
from server.pages.router import safe_next
from server.policy import service as policy
from server.rubrics import service as rubrics
from server.submissions import regrade as regrades
from server.submissions import service as submissions
from server.submissions.models import Submission

router = APIRouter(prefix="/staff", include_in_schema=False)

# The base layout shows the "Staff" link to those it is for; registered here so the layout needs no query.
environment().globals.setdefault("teaches", views.teaches)

# Success notes a page shows after a form's redirect (?done=...).
DONE = frozenset(
    {
        "override",
        "override_removed",
        "regrade",
        "rubric",
        "saved",
        "unchanged",
        "created",
        "role",
        "published",
    }
)


async def form_fields(request: Request) -> dict[str, str]:
    """A form's text fields (files are read by the route that takes one)."""
    form = await request.form()
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}


async def uploaded_roster(request: Request) -> bytes | None:
    """The roster file of a multipart form, at most one byte over the limit (the service refuses it)."""
    upload = (await request.form()).get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    return await upload.read(exports.MAX_ROSTER_BYTES + 1)


FormFields = Annotated[dict[str, str], Depends(form_fields)]
RosterFile = Annotated[bytes | None, Depends(uploaded_roster)]


def _translator(request: Request, user: User) -> i18n.Translate:
    return i18n.translator(i18n.negotiate(request, user))


def _page(
    request: Request, template: str, *, user: User, status_code: int = 200, **context: Any
) -> HTMLResponse:
    t = _translator(request, user)
    return render(
        request,
        template,
        user=user,
        status_code=status_code,
        local_text=policy.local_text,
        score_text=views.score_text,
        age_text=lambda seconds: views.age_text(t, seconds),
        **context,
    )


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _done(done: str | None) -> str | None:
    return done if done in DONE else None


def _assignment_url(assignment: Assignment, tail: str = "") -> str:
    return f"/staff/{assignment.course.slug}/assignments/{assignment.slug}{tail}"


# -- home -------------------------------------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def home(request: Request, session: SessionDep, user: PageUser) -> Response:
    t = _translator(request, user)
    taught = views.staff_courses(session, user)
    if not taught:
        raise Forbidden(t("staff.error.forbidden"))
    listing: list[tuple[Course, Role, list[Assignment]]] = []
    for course, role in taught:
        rows = session.scalars(
            select(Assignment)
            .where(Assignment.course_id == course.id)
            .order_by(Assignment.due_at, Assignment.id)
        )
        listing.append((course, role, list(rows)))
    counts = views.submission_counts(session, [a.id for _, _, rows in listing for a in rows])
    return _page(
        request, "staff/home.html", user=user, title=t("staff.home.title"), listing=listing, counts=counts
    )


# -- a new assignment from a package -----------------------------------------------------------------------------


def _packages(session: Session, course: Course) -> list[dict[str, Any]]:
    """The packages shipped under graders/ that the course does not have yet (and those that do not load)."""
    taken = set(session.scalars(select(Assignment.slug).where(Assignment.course_id == course.id)))
    found = []
    for path in course_packages():
        try:
            package = load_package(path)
        except PackageError as exc:
            found.append({"slug": path.name, "path": path, "package": None, "error": str(exc)})
            continue
        if package.slug not in taken:
            found.append({"slug": package.slug, "path": path, "package": package, "error": None})
    return found


def _new_page(
    request: Request,
    session: Session,
    user: User,
    course: Course,
    *,
    status_code: int = 200,
    chosen: str = "",
    visible: bool = False,
    error: str | None = None,
) -> HTMLResponse:
    t = _translator(request, user)
    return _page(
        request,
        "staff/new_assignment.html",
        user=user,
        status_code=status_code,
        title=t("staff.new.title"),
        course=course,
        packages=_packages(session, course),
        chosen=chosen,
        visible=visible,
        error=error,
    )


@router.get("/{course}/assignments/new", response_class=HTMLResponse)
def new_assignment(request: Request, course: str, session: SessionDep, user: PageUser) -> Response:
    target, _ = views.staff_course(session, user, _translator(request, user), course, instructor=True)
    return _new_page(request, session, user, target)


@router.post("/{course}/assignments/new", response_class=HTMLResponse)
def create_assignment(
    request: Request, course: str, session: SessionDep, user: PageUser, form: FormFields
) -> Response:
    check_form_csrf(request, form.get("csrf_token"))
    t = _translator(request, user)
    target, _ = views.staff_course(session, user, t, course, instructor=True)
    chosen = form.get("package", "")
    visible = bool(form.get("published"))
    package = next(
        (item for item in _packages(session, target) if item["slug"] == chosen and item["error"] is None),
        None,
    )
    if package is None:
        return _new_page(
            request,
            session,
            user,
            target,
            status_code=400,
            chosen=chosen,
            visible=visible,
            error=t("staff.new.choose"),
        )
    try:
        assignment = assignments.publish_package(
            session=session, course=target, path=package["path"], actor=user, published=visible
        )
    except BadRequest as exc:
        session.rollback()
        return _new_page(
            request, session, user, target, status_code=400, chosen=chosen, visible=visible, error=exc.message
        )
    session.commit()
    return _see_other(_assignment_url(assignment, "/settings?done=created"))


# -- an assignment: overview, grades and charts ------------------------------------------------------------------


@router.get("/{course}/assignments/{slug}", response_class=HTMLResponse)
def assignment_overview(
    request: Request, course: str, slug: str, session: SessionDep, user: PageUser, done: str | None = None
) -> Response:
    t = _translator(request, user)
    access = views.staff_assignment(session, user, t, course, slug)
    assignment = access.assignment
    grades = policy.assignment_grades(session=session, assignment=assignment)
    submitted = views.submissions_per_student(session, assignment)
    students = [
        {
            "grade": grade,
            "submissions": submitted.get(grade.user.id, 0),
            "late": (
                views.lateness_text(t, grade.counted.lateness)
                if grade.counted is not None and grade.counted.lateness.units_late
                else None
            ),
        }
        for grade in grades
    ]
    counted = [grade.score for grade in grades if grade.counted is not None]
    manifest = assignment.bundle.manifest
    return _page(
        request,
        "staff/assignment.html",
        user=user,
        title=assignment.title,
        access=access,
        instructor=access.role == Role.instructor,
        assignment=assignment,
        course=assignment.course,
        manifest=manifest,
        manual=submissions.is_manual(manifest),
        policy_text=views.policy_text(t, policy.policy_of(assignment)),
        students=students,
        summary=views.score_summary(counted, len(grades)),
        chart=views.chart_data(session, t, assignment, grades),
        api=f"/api/courses/{assignment.course.slug}/assignments/{assignment.slug}",
        done=_done(done),
    )


@router.post("/{course}/assignments/{slug}/publish")
def publish(
    request: Request, course: str, slug: str, session: SessionDep, user: PageUser, form: FormFields
) -> Response:
    """Show the assignment to students, or hide it again (instructors)."""
    check_form_csrf(request, form.get("csrf_token"))
    access = views.staff_assignment(session, user, _translator(request, user), course, slug, instructor=True)
    policy.apply_settings(
        session=session,
        assignment=access.assignment,
        actor=user,
        changes={"published": form.get("published") == "1"},
    )
    session.commit()
    back = safe_next(form.get("next"), _assignment_url(access.assignment))
    return _see_other(back + ("&" if "?" in back else "?") + "done=published")


# -- an assignment's settings (instructors) ----------------------------------------------------------------------

# Where a service refusal about a setting is shown in the form.
FORM_FIELD = {"rate_limit_window_s": "rate_limit_window_min", "late_policy": "late_kind"}


def _settings_page(
    request: Request,
    user: User,
    assignment: Assignment,
    values: dict[str, str],
    *,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    done: str | None = None,
) -> HTMLResponse:
    t = _translator(request, user)
    manifest = assignment.bundle.manifest
    return _page(
        request,
        "staff/settings.html",
        user=user,
        status_code=status_code,
        title=t("staff.settings.title", title=assignment.title),
        assignment=assignment,
        course=assignment.course,
        manifest=manifest,
        leaderboard=manifest.get("leaderboard"),
        values=values,
        errors=errors or {},
        policy_text=views.policy_text(t, policy.policy_of(assignment)),
        done=done,
    )


@router.get("/{course}/assignments/{slug}/settings", response_class=HTMLResponse)
def settings_form(
    request: Request, course: str, slug: str, session: SessionDep, user: PageUser, done: str | None = None
) -> Response:
    access = views.staff_assignment(session, user, _translator(request, user), course, slug, instructor=True)
    assignment = access.assignment
    return _settings_page(request, user, assignment, views.settings_values(assignment), done=_done(done))


@router.post("/{course}/assignments/{slug}/settings", response_class=HTMLResponse)
def save_settings(
    request: Request, course: str, slug: str, session: SessionDep, user: PageUser, form: FormFields
) -> Response:
    check_form_csrf(request, form.get("csrf_token"))
    t = _translator(request, user)
    access = views.staff_assignment(session, user, t, course, slug, instructor=True)
    assignment = access.assignment
    values, changes, errors = views.parse_settings(t, assignment, form)
    if errors:
        return _settings_page(request, user, assignment, values, status_code=400, errors=errors)
    if not changes:
        return _see_other(_assignment_url(assignment, "/settings?done=unchanged"))
    try:
        policy.apply_settings(
            session=session,
            assignment=assignment,
            actor=user,
            changes=changes,
            allow_past_deadline=bool(values["allow_past_deadline"]),
        )
    except BadRequest as exc:
        session.rollback()
        field = str(exc.details.get("field") or "form")
        return _settings_page(
            request,
            user,
            assignment,
            values,
            status_code=400,
            errors={FORM_FIELD.get(field, field): views.explain(t, exc)},
        )
    session.commit()
    return _see_other(_assignment_url(assignment, "/settings?done=saved"))


# -- submissions ------------------------------------------------------------------------------------------------


@router.get("/{course}/assignments/{slug}/submissions", response_class=HTMLResponse)
def submission_list(
    request: Request, course: str, slug: str, session: SessionDep, user: PageUser
) -> Response:
    t = _translator(request, user)
    access = views.staff_assignment(session, user, t, course, slug)
    assignment = access.assignment
    filters = views.parse_filters(t, request.query_params)
    total, rows = views.submission_rows(session, t, assignment, filters)
    pages = max(1, -(-total // views.PAGE_SIZE))
    return _page(
        request,
        "staff/submissions.html",
        user=user,
        status_code=400 if filters.errors else 200,
        title=t("staff.submissions.title", title=assignment.title),
        assignment=assignment,
        course=assignment.course,
        filters=filters,
        rows=rows,
        total=total,
        pages=pages,
        first=(filters.page - 1) * views.PAGE_SIZE + 1 if rows else 0,
        last=(filters.page - 1) * views.PAGE_SIZE + len(rows),
        statuses=list(views.SubmissionStatus),
        late_filters=views.LATE_FILTERS,
        students=views.student_usernames(session, assignment.course),
    )


@router.get("/{course}/assignments/{slug}/students/{username}", response_class=HTMLResponse)
def student_history(
    request: Request, course: str, slug: str, username: str, session: SessionDep, user: PageUser
) -> Response:
    t = _translator(request, user)
    access = views.staff_assignment(session, user, t, course, slug)
    assignment = access.assignment
    student = views.member(session, t, assignment.course, username)
    grade = policy.student_grade(session=session, assignment=assignment, user=student)
    by_id, counted = views.grades_by_submission([grade])
    rows = [
        views.row_of(t, submission, by_id, counted)
        for submission in submissions.list_for_user(session=session, user=student, assignment=assignment)
    ]
    return _page(
        request,
        "staff/student.html",
        user=user,
        title=t("staff.student.title", username=student.username, title=assignment.title),
        assignment=assignment,
        course=assignment.course,
        student=student,
        grade=grade,
        rows=rows,
        policy_text=views.policy_text(t, policy.policy_of(assignment)),
        counted_late=(views.lateness_text(t, grade.counted.lateness) if grade.counted is not None else None),
    )


# -- one submission ---------------------------------------------------------------------------------------------


def _submission_page(
    request: Request,
    session: Session,
    user: User,
    submission: Submission,
    *,
    status_code: int = 200,
    done: str | None = None,
    **forms: Any,
) -> HTMLResponse:
    t = _translator(request, user)
    assignment = submission.assignment
    manifest = submission.assignment.bundle.manifest
    run = submissions.latest_run(session=session, submission=submission)
    grade = policy.student_grade(session=session, assignment=assignment, user=submission.user)
    mine = next((item for item in grade.submissions if item.submission.id == submission.id), None)
    manual = submissions.is_manual(manifest)
    rubric_values = forms.pop("rubric_values", None)
    scored = {row.criterion: row for row in rubrics.scores_for(session=session, submission=submission)}
    criteria = []
    for criterion in rubrics.criteria_of(submission) if manual else []:
        row = scored.get(criterion["name"])
        criteria.append(
            {
                **criterion,
                "row": row,
                "points_value": (
                    rubric_values.get(f"points_{criterion['name']}", "")
                    if rubric_values is not None
                    else (f"{row.points:g}" if row is not None else "")
                ),
                "comment_value": (
                    rubric_values.get(f"comment_{criterion['name']}", "")
                    if rubric_values is not None
                    else (row.comment if row is not None else "")
                ),
            }
        )
    defaults: dict[str, Any] = {
        "override_values": {"score": "", "reason": ""},
        "override_error": None,
        "override_field": None,
        "remove_error": None,
        "remove_reason": "",
        "regrade_error": None,
        "rubric_errors": {},
    }
    return _page(
        request,
        "staff/submission.html",
        user=user,
        status_code=status_code,
        title=t("staff.submission.title", id=submission.id),
        submission=submission,
        assignment=assignment,
        course=assignment.course,
        student=submission.user,
        manual=manual,
        run=run,
        results=(
            submissions.present_results(run, submissions.visibility_for(submission, staff=True))
            if run is not None
            else None
        ),
        runs=list(submission.runs),
        grade=mine,
        counted=grade.counted is not None and grade.counted.submission.id == submission.id,
        late=views.lateness_text(t, mine.lateness) if mine is not None else None,
        override=policy.override_of(session=session, submission=submission),
        maximum=float(submission.max_score or assignment.points),
        criteria=criteria,
        queue_position=submissions.queue_position(session=session, submission=submission),
        done=_done(done),
        **{**defaults, **forms},
    )


@router.get("/submissions/{submission_id:int}", response_class=HTMLResponse)
def submission_page(
    request: Request, submission_id: int, session: SessionDep, user: PageUser, done: str | None = None
) -> Response:
    submission = views.staff_submission(session, user, _translator(request, user), submission_id)
    return _submission_page(request, session, user, submission, done=done)


def _back_to(submission: Submission, done: str) -> RedirectResponse:
    return _see_other(f"/staff/submissions/{submission.id}?done={done}")


@router.post("/submissions/{submission_id:int}/override", response_class=HTMLResponse)
def override_score(
    request: Request, submission_id: int, session: SessionDep, user: PageUser, form: FormFields
) -> Response:
    """Replace the score (reason required; the student sees both; audit-logged)."""
    check_form_csrf(request, form.get("csrf_token"))
    t = _translator(request, user)
    submission = views.staff_submission(session, user, t, submission_id)
    typed = {"score": form.get("score", "").strip()[:32], "reason": form.get("reason", "")[:5000]}
    score = views.parse_number(typed["score"])
    if score is None:
        return _submission_page(
            request,
            session,
            user,
            submission,
            status_code=400,
            override_values=typed,
            override_error=t("staff.override.not_a_number"),
            override_field="score",
        )
    try:
        policy.set_override(
            session=session, submission=submission, actor=user, score=score, reason=typed["reason"]
        )
    except BadRequest as exc:
        session.rollback()
        return _submission_page(
            request,
            session,
            user,
            submission,
            status_code=400,
            override_values=typed,
            override_error=views.explain(t, exc),
            override_field="score" if exc.code == "score_out_of_range" else "reason",
        )
    session.commit()
    return _back_to(submission, "override")


@router.post("/submissions/{submission_id:int}/override/remove", response_class=HTMLResponse)
def remove_override(
    request: Request, submission_id: int, session: SessionDep, user: PageUser, form: FormFields
) -> Response:
    check_form_csrf(request, form.get("csrf_token"))
    t = _translator(request, user)
    submission = views.staff_submission(session, user, t, submission_id)
    reason = form.get("reason", "")[:5000]
    try:
        policy.remove_override(session=session, submission=submission, actor=user, reason=reason)
    except (BadRequest, NotFound) as exc:
        session.rollback()
        return _submission_page(
            request,
            session,
            user,
            submission,
            status_code=400,
            remove_error=views.explain(t, exc),
            remove_reason=reason,
        )
    session.commit()
    return _back_to(submission, "override_removed")


@router.post("/submissions/{submission_id:int}/regrade", response_class=HTMLResponse)
def regrade(
    request: Request, submission_id: int, session: SessionDep, user: PageUser, form: FormFields
) -> Response:
    """Grade the submission again with the assignment's current grader, in the staff lane (as the API does)."""
    check_form_csrf(request, form.get("csrf_token"))
    t = _translator(request, user)
    submission = views.staff_submission(session, user, t, submission_id)
    assignment = submission.assignment
    if submissions.is_manual(assignment.bundle.manifest):
        return _submission_page(
            request, session, user, submission, status_code=409, regrade_error=t("staff.regrade.manual")
        )
    done = regrades.requeue(
        session=session, assignment=assignment, submission_ids=[submission.id], now=utcnow()
    )
    if not done.requeued:
        return _submission_page(
            request, session, user, submission, status_code=409, regrade_error=t("staff.regrade.busy")
        )
    audit.record(
        session=session,
        actor=user,
        action="submission.regrade",
        target_type="submission",
        target_id=submission.id,
        course_id=assignment.course_id,
        bundle_sha256=assignment.bundle.sha256,
    )
    session.commit()
    # After the commit, as the API does; if the broker is down the sweeper sends it later.
    queue.enqueue_grading(
        submission.id, queue=assignment.queue, time_limit_s=float(assignment.bundle.manifest["time_limit_s"])
    )
    return _back_to(submission, "regrade")


@router.post("/submissions/{submission_id:int}/rubric", response_class=HTMLResponse)
def rubric_scores(
    request: Request, submission_id: int, session: SessionDep, user: PageUser, form: FormFields
) -> Response:
    """Points and a comment per criterion; criteria left empty stay as they were."""
    check_form_csrf(request, form.get("csrf_token"))
    t = _translator(request, user)
    submission = views.staff_submission(session, user, t, submission_id)
    if not submissions.is_manual(submission.assignment.bundle.manifest):
        raise Conflict(t("staff.rubric.not_manual"))
    scores, errors = views.parse_rubric(t, rubrics.criteria_of(submission), form)
    if not errors:
        try:
            rubrics.set_scores(session=session, submission=submission, grader=user, scores=scores)
        except DomainError as exc:
            session.rollback()
            errors = {"form": views.explain(t, exc)}
    if errors:
        return _submission_page(
            request,
            session,
            user,
            submission,
            status_code=400,
            rubric_values=form,
            rubric_errors=errors,
        )
    session.commit()
    return _back_to(submission, "rubric")


# -- the roster -------------------------------------------------------------------------------------------------


def _roster_page(
    request: Request,
    session: Session,
    user: User,
    course: Course,
    role: Role,
    *,
    status_code: int = 200,
    csv_text: str = "",
    import_error: str | None = None,
    problems: list[exports.RosterProblem] | None = None,
    imported: courses.RosterImport | None = None,
    role_error: str | None = None,
    done: str | None = None,
) -> HTMLResponse:
    t = _translator(request, user)
    enrollments = list(
        session.scalars(
            select(Enrollment)
            .join(User, User.id == Enrollment.user_id)
            .where(Enrollment.course_id == course.id)
            .order_by(Enrollment.role, User.username)
        )
    )
    return _page(
        request,
        "staff/roster.html",
        user=user,
        status_code=status_code,
        title=t("staff.roster.title"),
        course=course,
        instructor=role == Role.instructor,
        enrollments=enrollments,
        roles=list(Role),
        csv_text=csv_text,
        import_error=import_error,
        problems=problems or [],
        imported=imported,
        role_error=role_error,
        done=_done(done),
    )


@router.get("/{course}/roster", response_class=HTMLResponse)
def roster(
    request: Request, course: str, session: SessionDep, user: PageUser, done: str | None = None
) -> Response:
    target, role = views.staff_course(session, user, _translator(request, user), course)
    return _roster_page(request, session, user, target, role, done=done)


@router.post("/{course}/roster/import", response_class=HTMLResponse)
def import_roster(
    request: Request, course: str, session: SessionDep, user: PageUser, form: FormFields, upload: RosterFile
) -> Response:
    """Accounts and roles from a CSV file or pasted text: every row, or (on any problem) none."""
    check_form_csrf(request, form.get("csrf_token"))
    t = _translator(request, user)
    target, role = views.staff_course(session, user, t, course, instructor=True)
    csv_text = form.get("csv_text", "")
    data = upload if upload else csv_text.encode("utf-8")
    if not data.strip():
        return _roster_page(
            request, session, user, target, role, status_code=400, import_error=t("staff.roster.empty")
        )
    try:
        result = exports.import_roster(session=session, course=target, actor=user, data=data)
    except exports.RosterRejected as exc:
        session.rollback()
        return _roster_page(
            request,
            session,
            user,
            target,
            role,
            status_code=400,
            csv_text=csv_text,
            import_error=t("staff.roster.rejected", n=len(exc.problems)),
            problems=exc.problems,
        )
    except DomainError as exc:
        session.rollback()
        return _roster_page(
            request,
            session,
            user,
            target,
            role,
            status_code=400,
            csv_text=csv_text,
            import_error=views.explain(t, exc),
        )
    session.commit()
    # Rendered, not redirected: generated passwords are shown this once.
    return _roster_page(request, session, user, target, role, imported=result)


@router.post("/{course}/roster/{username}/role", response_class=HTMLResponse)
def change_role(
    request: Request, course: str, username: str, session: SessionDep, user: PageUser, form: FormFields
) -> Response:
    check_form_csrf(request, form.get("csrf_token"))
    t = _translator(request, user)
    target, role = views.staff_course(session, user, t, course, instructor=True)
    member = views.member(session, t, target, username)
    try:
        views.change_role(session, target, actor=user, member=member, role=form.get("role", ""))
    except DomainError as exc:
        session.rollback()
        return _roster_page(
            request, session, user, target, role, status_code=400, role_error=views.explain(t, exc)
        )
    session.commit()
    return _see_other(f"/staff/{target.slug}/roster?done=role")


# -- queue and worker health -------------------------------------------------------------------------------------


@router.get("/{course}/queue", response_class=HTMLResponse)
def queue_page(request: Request, course: str, session: SessionDep, user: PageUser) -> Response:
    t = _translator(request, user)
    target, _ = views.staff_course(session, user, t, course)
    return _page(
        request,
        "staff/queue.html",
        user=user,
        title=t("staff.queue.title"),
        course=target,
        health=views.queue_health(session, target, utcnow()),
        lanes=views.LANES,
    )


@router.get("/{course}/queue/panel", response_class=HTMLResponse)
def queue_panel(request: Request, course: str, session: SessionDep, user: PageUser) -> Response:
    """The live part of the queue page, which it reloads every few seconds."""
    t = _translator(request, user)
    target, _ = views.staff_course(session, user, t, course)
    return _page(
        request,
        "staff/_queue_panel.html",
        user=user,
        course=target,
        health=views.queue_health(session, target, utcnow()),
        lanes=views.LANES,
    )
