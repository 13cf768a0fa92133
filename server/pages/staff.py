"""Staff pages: the TAs' and instructors' side of the course.

TAs (and instructors): every submission of an assignment with filters and paging, a student's history, one
submission with its runs, a score override with a reason the student reads, rubric scores, a regrade; the
assignment's grades, charts and exports; the queue and the workers. Instructors also: a new assignment from a
grader package shipped with the server, its settings, publishing, the roster and its roles.

The pages call the same services and loaders as the API, so a page allows exactly what the API would: a student
gets the 403 page, someone outside the course a 404, and every form posts with the session's CSRF token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from graders.package import PackageError, load_package
from server.assignments import service as assignments
from server.assignments.models import Assignment
from server.assignments.service import AssignmentAccess
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


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a staff page, and in which language; its loaders answer 404 or 403 as the API does."""

    request: Request
    session: Session
    user: User
    t: i18n.Translate

    def course(self, slug: str, *, instructor: bool = False) -> tuple[Course, Role]:
        return views.staff_course(self.session, self.user, self.t, slug, instructor=instructor)

    def assignment(self, course: str, slug: str, *, instructor: bool = False) -> AssignmentAccess:
        return views.staff_assignment(self.session, self.user, self.t, course, slug, instructor=instructor)

    def submission(self, submission_id: int) -> Submission:
        return views.staff_submission(self.session, self.user, self.t, submission_id)


@dataclass(frozen=True)
class Posted(Viewer):
    """A staff form whose CSRF token was checked before anything was loaded or changed, and its text fields."""

    form: dict[str, str]

    def saved(self, url: str) -> RedirectResponse:
        """Keep what the form changed, then show ``url`` (post, redirect, get)."""
        self.session.commit()
        return _see_other(url)

    def refused(
        self, page: Callable[..., HTMLResponse], *args: Any, status_code: int = 400, **context: Any
    ) -> HTMLResponse:
        """Keep nothing the refused form changed, and show its page again saying why."""
        self.session.rollback()
        return page(self, *args, status_code=status_code, **context)


def staff_viewer(request: Request, session: SessionDep, user: PageUser) -> Viewer:
    return Viewer(request, session, user, _translator(request, user))


def staff_form(request: Request, session: SessionDep, user: PageUser, form: FormFields) -> Posted:
    check_form_csrf(request, form.get("csrf_token"))
    return Posted(request, session, user, _translator(request, user), form)


StaffViewer = Annotated[Viewer, Depends(staff_viewer)]
StaffForm = Annotated[Posted, Depends(staff_form)]


def _page(viewer: Viewer, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    t = viewer.t
    return render(
        viewer.request,
        template,
        user=viewer.user,
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


def _submission_url(submission: Submission, done: str) -> str:
    return f"/staff/submissions/{submission.id}?done={done}"


# -- home -------------------------------------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def home(viewer: StaffViewer) -> Response:
    session, t = viewer.session, viewer.t
    taught = views.staff_courses(session, viewer.user)
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
    return _page(viewer, "staff/home.html", title=t("staff.home.title"), listing=listing, counts=counts)


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
    viewer: Viewer,
    course: Course,
    *,
    status_code: int = 200,
    chosen: str = "",
    visible: bool = False,
    error: str | None = None,
) -> HTMLResponse:
    return _page(
        viewer,
        "staff/new_assignment.html",
        status_code=status_code,
        title=viewer.t("staff.new.title"),
        course=course,
        packages=_packages(viewer.session, course),
        chosen=chosen,
        visible=visible,
        error=error,
    )


@router.get("/{course}/assignments/new", response_class=HTMLResponse)
def new_assignment(course: str, viewer: StaffViewer) -> Response:
    target, _ = viewer.course(course, instructor=True)
    return _new_page(viewer, target)


@router.post("/{course}/assignments/new", response_class=HTMLResponse)
def create_assignment(course: str, post: StaffForm) -> Response:
    target, _ = post.course(course, instructor=True)
    chosen = post.form.get("package", "")
    visible = bool(post.form.get("published"))
    package = next(
        (
            item
            for item in _packages(post.session, target)
            if item["slug"] == chosen and item["error"] is None
        ),
        None,
    )
    if package is None:
        return post.refused(
            _new_page, target, chosen=chosen, visible=visible, error=post.t("staff.new.choose")
        )
    try:
        assignment = assignments.publish_package(
            session=post.session, course=target, path=package["path"], actor=post.user, published=visible
        )
    except BadRequest as exc:
        return post.refused(_new_page, target, chosen=chosen, visible=visible, error=exc.message)
    return post.saved(_assignment_url(assignment, "/settings?done=created"))


# -- an assignment: overview, grades and charts ------------------------------------------------------------------


@router.get("/{course}/assignments/{slug}", response_class=HTMLResponse)
def assignment_overview(course: str, slug: str, viewer: StaffViewer, done: str | None = None) -> Response:
    session, t = viewer.session, viewer.t
    access = viewer.assignment(course, slug)
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
        viewer,
        "staff/assignment.html",
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
def publish(course: str, slug: str, post: StaffForm) -> Response:
    """Show the assignment to students, or hide it again (instructors)."""
    access = post.assignment(course, slug, instructor=True)
    policy.apply_settings(
        session=post.session,
        assignment=access.assignment,
        actor=post.user,
        changes={"published": post.form.get("published") == "1"},
    )
    back = safe_next(post.form.get("next"), _assignment_url(access.assignment))
    return post.saved(back + ("&" if "?" in back else "?") + "done=published")


# -- an assignment's settings (instructors) ----------------------------------------------------------------------

# Where a service refusal about a setting is shown in the form.
FORM_FIELD = {"rate_limit_window_s": "rate_limit_window_min", "late_policy": "late_kind"}


def _settings_page(
    viewer: Viewer,
    assignment: Assignment,
    values: dict[str, str],
    *,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    done: str | None = None,
) -> HTMLResponse:
    t = viewer.t
    manifest = assignment.bundle.manifest
    return _page(
        viewer,
        "staff/settings.html",
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
def settings_form(course: str, slug: str, viewer: StaffViewer, done: str | None = None) -> Response:
    assignment = viewer.assignment(course, slug, instructor=True).assignment
    return _settings_page(viewer, assignment, views.settings_values(assignment), done=_done(done))


@router.post("/{course}/assignments/{slug}/settings", response_class=HTMLResponse)
def save_settings(course: str, slug: str, post: StaffForm) -> Response:
    assignment = post.assignment(course, slug, instructor=True).assignment
    values, changes, errors = views.parse_settings(post.t, assignment, post.form)
    if errors:
        return post.refused(_settings_page, assignment, values, errors=errors)
    if not changes:
        return _see_other(_assignment_url(assignment, "/settings?done=unchanged"))
    try:
        policy.apply_settings(
            session=post.session,
            assignment=assignment,
            actor=post.user,
            changes=changes,
            allow_past_deadline=bool(values["allow_past_deadline"]),
        )
    except BadRequest as exc:
        field = str(exc.details.get("field") or "form")
        errors = {FORM_FIELD.get(field, field): views.explain(post.t, exc)}
        return post.refused(_settings_page, assignment, values, errors=errors)
    return post.saved(_assignment_url(assignment, "/settings?done=saved"))


# -- submissions ------------------------------------------------------------------------------------------------


@router.get("/{course}/assignments/{slug}/submissions", response_class=HTMLResponse)
def submission_list(request: Request, course: str, slug: str, viewer: StaffViewer) -> Response:
    session, t = viewer.session, viewer.t
    assignment = viewer.assignment(course, slug).assignment
    filters = views.parse_filters(t, request.query_params)
    total, rows = views.submission_rows(session, t, assignment, filters)
    pages = max(1, -(-total // views.PAGE_SIZE))
    return _page(
        viewer,
        "staff/submissions.html",
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
def student_history(course: str, slug: str, username: str, viewer: StaffViewer) -> Response:
    session, t = viewer.session, viewer.t
    assignment = viewer.assignment(course, slug).assignment
    student = views.member(session, t, assignment.course, username)
    grade = policy.student_grade(session=session, assignment=assignment, user=student)
    by_id, counted = views.grades_by_submission([grade])
    rows = [
        views.row_of(t, submission, by_id, counted)
        for submission in submissions.list_for_user(session=session, user=student, assignment=assignment)
    ]
    return _page(
        viewer,
        "staff/student.html",
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
    viewer: Viewer,
    submission: Submission,
    *,
    status_code: int = 200,
    done: str | None = None,
    **forms: Any,
) -> HTMLResponse:
    session, t = viewer.session, viewer.t
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
        viewer,
        "staff/submission.html",
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
def submission_page(submission_id: int, viewer: StaffViewer, done: str | None = None) -> Response:
    return _submission_page(viewer, viewer.submission(submission_id), done=done)


@router.post("/submissions/{submission_id:int}/override", response_class=HTMLResponse)
def override_score(submission_id: int, post: StaffForm) -> Response:
    """Replace the score (reason required; the student sees both; audit-logged)."""
    submission = post.submission(submission_id)
    typed = {"score": post.form.get("score", "").strip()[:32], "reason": post.form.get("reason", "")[:5000]}
    score = views.parse_number(typed["score"])
    if score is None:
        return post.refused(
            _submission_page,
            submission,
            override_values=typed,
            override_error=post.t("staff.override.not_a_number"),
            override_field="score",
        )
    try:
        policy.set_override(
            session=post.session, submission=submission, actor=post.user, score=score, reason=typed["reason"]
        )
    except BadRequest as exc:
        return post.refused(
            _submission_page,
            submission,
            override_values=typed,
            override_error=views.explain(post.t, exc),
            override_field="score" if exc.code == "score_out_of_range" else "reason",
        )
    return post.saved(_submission_url(submission, "override"))


@router.post("/submissions/{submission_id:int}/override/remove", response_class=HTMLResponse)
def remove_override(submission_id: int, post: StaffForm) -> Response:
    submission = post.submission(submission_id)
    reason = post.form.get("reason", "")[:5000]
    try:
        policy.remove_override(session=post.session, submission=submission, actor=post.user, reason=reason)
    except (BadRequest, NotFound) as exc:
        return post.refused(
            _submission_page, submission, remove_error=views.explain(post.t, exc), remove_reason=reason
        )
    return post.saved(_submission_url(submission, "override_removed"))


@router.post("/submissions/{submission_id:int}/regrade", response_class=HTMLResponse)
def regrade(submission_id: int, post: StaffForm) -> Response:
    """Grade the submission again with the assignment's current grader, in the staff lane (as the API does)."""
    submission = post.submission(submission_id)
    try:
        regrades.regrade_one(session=post.session, submission=submission, actor=post.user)
    except Conflict as exc:
        why = post.t("staff.regrade.manual" if exc.code == "manual_grading" else "staff.regrade.busy")
        return post.refused(_submission_page, submission, status_code=409, regrade_error=why)
    return _see_other(_submission_url(submission, "regrade"))


@router.post("/submissions/{submission_id:int}/rubric", response_class=HTMLResponse)
def rubric_scores(submission_id: int, post: StaffForm) -> Response:
    """Points and a comment per criterion; criteria left empty stay as they were."""
    submission = post.submission(submission_id)
    if not submissions.is_manual(submission.assignment.bundle.manifest):
        raise Conflict(post.t("staff.rubric.not_manual"))
    scores, errors = views.parse_rubric(post.t, rubrics.criteria_of(submission), post.form)
    if not errors:
        try:
            rubrics.set_scores(session=post.session, submission=submission, grader=post.user, scores=scores)
        except DomainError as exc:
            errors = {"form": views.explain(post.t, exc)}
    if errors:
        return post.refused(_submission_page, submission, rubric_values=post.form, rubric_errors=errors)
    return post.saved(_submission_url(submission, "rubric"))


# -- the roster -------------------------------------------------------------------------------------------------


def _roster_page(
    viewer: Viewer,
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
    enrollments = list(
        viewer.session.scalars(
            select(Enrollment)
            .join(User, User.id == Enrollment.user_id)
            .where(Enrollment.course_id == course.id)
            .order_by(Enrollment.role, User.username)
        )
    )
    return _page(
        viewer,
        "staff/roster.html",
        status_code=status_code,
        title=viewer.t("staff.roster.title"),
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
def roster(course: str, viewer: StaffViewer, done: str | None = None) -> Response:
    target, role = viewer.course(course)
    return _roster_page(viewer, target, role, done=done)


@router.post("/{course}/roster/import", response_class=HTMLResponse)
def import_roster(course: str, post: StaffForm, upload: RosterFile) -> Response:
    """Accounts and roles from a CSV file or pasted text: every row, or (on any problem) none."""
    target, role = post.course(course, instructor=True)
    csv_text = post.form.get("csv_text", "")
    data = upload if upload else csv_text.encode("utf-8")
    if not data.strip():
        return post.refused(_roster_page, target, role, import_error=post.t("staff.roster.empty"))
    try:
        result = exports.import_roster(session=post.session, course=target, actor=post.user, data=data)
    except exports.RosterRejected as exc:
        return post.refused(
            _roster_page,
            target,
            role,
            csv_text=csv_text,
            import_error=post.t("staff.roster.rejected", n=len(exc.problems)),
            problems=exc.problems,
        )
    except DomainError as exc:
        return post.refused(
            _roster_page, target, role, csv_text=csv_text, import_error=views.explain(post.t, exc)
        )
    post.session.commit()
    # Rendered, not redirected: generated passwords are shown this once.
    return _roster_page(post, target, role, imported=result)


@router.post("/{course}/roster/{username}/role", response_class=HTMLResponse)
def change_role(course: str, username: str, post: StaffForm) -> Response:
    target, role = post.course(course, instructor=True)
    member = views.member(post.session, post.t, target, username)
    try:
        views.change_role(
            post.session, target, actor=post.user, member=member, role=post.form.get("role", "")
        )
    except DomainError as exc:
        return post.refused(_roster_page, target, role, role_error=views.explain(post.t, exc))
    return post.saved(f"/staff/{target.slug}/roster?done=role")


# -- queue and worker health -------------------------------------------------------------------------------------


@router.get("/{course}/queue", response_class=HTMLResponse)
def queue_page(course: str, viewer: StaffViewer) -> Response:
    target, _ = viewer.course(course)
    return _page(
        viewer,
        "staff/queue.html",
        title=viewer.t("staff.queue.title"),
        course=target,
        health=views.queue_health(viewer.session, target, utcnow()),
        lanes=views.LANES,
    )


@router.get("/{course}/queue/panel", response_class=HTMLResponse)
def queue_panel(course: str, viewer: StaffViewer) -> Response:
    """The live part of the queue page, which it reloads every few seconds."""
    target, _ = viewer.course(course)
    return _page(
        viewer,
        "staff/_queue_panel.html",
        course=target,
        health=views.queue_health(viewer.session, target, utcnow()),
        lanes=views.LANES,
    )
