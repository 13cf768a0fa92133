"""Courses, enrollments and the roster."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.auth import security
from server.auth import service as auth_service
from server.auth.models import User
from server.courses.models import Course, Enrollment, Role
from server.errors import BadRequest, NotFound

ROSTER_COLUMNS = ("username", "display_name", "email", "role", "password")


def ensure_course(*, session: Session, slug: str, title: str, timezone: str) -> Course:
    course = session.scalar(select(Course).where(Course.slug == slug))
    if course is None:
        course = Course(slug=slug, title=title, timezone=timezone)
        session.add(course)
        session.flush()
    return course


def get_course(*, session: Session, slug: str) -> Course:
    course = session.scalar(select(Course).where(Course.slug == slug))
    if course is None:
        raise NotFound(f"There is no course {slug!r}.")
    return course


def role_in(*, session: Session, user: User, course: Course) -> Role | None:
    """The user's role in the course; administrators act as instructors everywhere."""
    if user.is_admin:
        return Role.instructor
    return session.scalar(
        select(Enrollment.role).where(Enrollment.course_id == course.id, Enrollment.user_id == user.id)
    )


def enroll(*, session: Session, course: Course, user: User, role: Role) -> Enrollment:
    enrollment = session.scalar(
        select(Enrollment).where(Enrollment.course_id == course.id, Enrollment.user_id == user.id)
    )
    if enrollment is None:
        enrollment = Enrollment(course_id=course.id, user_id=user.id, role=role)
        session.add(enrollment)
    else:
        enrollment.role = role
    session.flush()
    return enrollment


@dataclass
class RosterImport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    # Passwords generated for new accounts whose row had none: handed to the instructor exactly once.
    generated_passwords: dict[str, str] = field(default_factory=dict)


def import_roster(*, session: Session, course: Course, csv_text: str) -> RosterImport:
    """Create or update accounts and enrollments from CSV with a header row.

    Columns: username (required), display_name, email, role (student | ta | instructor; default student),
    password (optional; a random one is generated for new accounts). The whole file is validated before
    anything is written: one bad row rejects the import with its line number.
    """
    reader = csv.DictReader(io.StringIO(csv_text.lstrip("\ufeff")))
    if reader.fieldnames is None or "username" not in reader.fieldnames:
        raise BadRequest("The roster CSV needs a header row with at least a 'username' column.")
    unknown = set(reader.fieldnames) - set(ROSTER_COLUMNS)
    if unknown:
        raise BadRequest(
            f"Unknown roster column(s): {', '.join(sorted(unknown))}. Known: {', '.join(ROSTER_COLUMNS)}."
        )
    rows: list[tuple[str, str, str | None, Role, str | None]] = []
    seen: set[str] = set()
    for line_no, row in enumerate(reader, start=2):
        username = (row.get("username") or "").strip()
        try:
            auth_service.validate_username(username)
            role_text = (row.get("role") or "student").strip().lower()
            if role_text not in Role.__members__:
                raise BadRequest(f"role must be student, ta or instructor, not {role_text!r}")
            password = (row.get("password") or "").strip() or None
            if password:
                auth_service.validate_password(password)
        except BadRequest as exc:
            raise BadRequest(f"Roster line {line_no}: {exc.message}", code="bad_roster") from exc
        if username in seen:
            raise BadRequest(f"Roster line {line_no}: {username!r} appears twice.", code="bad_roster")
        seen.add(username)
        display_name = (row.get("display_name") or "").strip() or username
        email = (row.get("email") or "").strip() or None
        rows.append((username, display_name, email, Role(role_text), password))
    if not rows:
        raise BadRequest("The roster CSV has no rows.", code="bad_roster")

    result = RosterImport()
    for username, display_name, email, role, password in rows:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            if password is None:
                password = security.new_password()
                result.generated_passwords[username] = password
            user = auth_service.create_user(
                session=session, username=username, password=password, display_name=display_name, email=email
            )
            result.created.append(username)
        else:
            user.display_name = display_name
            user.email = email or user.email
            if password:
                auth_service.set_password(session=session, user=user, password=password)
            result.updated.append(username)
        enroll(session=session, course=course, user=user, role=role)
    return result


def export_roster(*, session: Session, course: Course) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(ROSTER_COLUMNS[:4])
    enrollments = session.scalars(
        select(Enrollment).where(Enrollment.course_id == course.id).order_by(Enrollment.id)
    )
    for enrollment in enrollments:
        user = enrollment.user
        writer.writerow([user.username, user.display_name, user.email or "", enrollment.role.value])
    return out.getvalue()
