"""First start: the course, an instructor account, and the course's assignments published."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from graders.package import load_package
from server.assignments import service as assignments
from server.assignments.models import Assignment
from server.auth import security
from server.auth import service as auth_service
from server.auth.models import User
from server.courses import service as courses
from server.courses.models import Course, Role
from server.settings import Settings

GRADERS_DIR = Path(__file__).resolve().parent.parent / "graders"
FIRST_INSTRUCTOR = "instructor"


@dataclass
class Bootstrap:
    course: Course
    assignments: list[Assignment]
    # Set only on the very first start, when the instructor account was created.
    instructor_password: str | None


def course_packages(root: Path = GRADERS_DIR) -> list[Path]:
    """Every assignment package shipped with the project: folders under graders/ with an assignment.toml."""
    return sorted(p.parent for p in root.glob("*/assignment.toml"))


def bootstrap(*, session: Session, settings: Settings, packages: list[Path] | None = None) -> Bootstrap:
    course = courses.ensure_course(
        session=session,
        slug=settings.course_slug,
        title=settings.course_title,
        timezone=settings.course_timezone,
    )
    password = None
    if not session.scalar(select(func.count()).select_from(User)):
        password = security.new_password()
        instructor = auth_service.create_user(
            session=session,
            username=FIRST_INSTRUCTOR,
            password=password,
            display_name="Course instructor",
            is_admin=True,
        )
        courses.enroll(session=session, course=course, user=instructor, role=Role.instructor)
    published = []
    for path in course_packages() if packages is None else packages:
        slug = load_package(path).slug
        existing = session.scalar(
            select(Assignment).where(Assignment.course_id == course.id, Assignment.slug == slug)
        )
        # Re-publishing keeps an assignment that staff unpublished unpublished.
        keep_published = existing.published if existing is not None else True
        published.append(
            assignments.publish_package(
                session=session, course=course, path=path, actor=None, published=keep_published
            )
        )
    session.commit()
    return Bootstrap(course=course, assignments=published, instructor_password=password)
