"""Publishing assignment packages and finding the assignments a user may see."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from graders.package import AssignmentPackage, PackageError, build_bundle, handout_zip, load_package
from server.assignments.models import Assignment, GraderBundle
from server.audit import service as audit
from server.auth.models import User
from server.courses import service as courses
from server.courses.models import Course, Role
from server.db import utcnow
from server.errors import BadRequest, Forbidden, NotFound
from server.submissions.archive import UploadPolicy


def manifest_of(package: AssignmentPackage) -> dict[str, Any]:
    """What the server needs to know about a package, stored beside its bundle as JSON."""
    return {
        "slug": package.slug,
        "title": package.title,
        "version": package.version,
        "summary": package.summary,
        "readme": package.readme,
        "queue": package.queue,
        "points": package.points,
        "module": package.module,
        "functions": list(package.functions),
        "tests": [
            {
                "name": t.name,
                "weight": t.weight,
                "visibility": t.visibility,
                "description": t.description,
                "requires": t.requires,
            }
            for t in package.tests
        ],
        "allowed_files": list(package.allowed_files),
        "max_files": package.max_files,
        "max_upload_bytes": package.max_upload_bytes,
        "max_file_bytes": package.max_file_bytes,
        "time_limit_s": package.time_limit_s,
        "call_timeout_s": package.call_timeout_s,
        "memory_mb": package.memory_mb,
        "max_processes": package.max_processes,
        "leaderboard": (
            {
                "metric": package.leaderboard.metric,
                "direction": package.leaderboard.direction,
                "unit": package.leaderboard.unit,
                "label": package.leaderboard.label,
            }
            if package.leaderboard
            else None
        ),
        "due_at": package.due_at.isoformat() if package.due_at else None,
        "grading": package.grading,
        "weight": package.weight,
        "required_files": list(package.required_files),
        "rubric": [
            {
                "name": criterion.name,
                "title": criterion.title,
                "points": criterion.points,
                "description": criterion.description,
            }
            for criterion in package.rubric
        ],
    }


def upload_policy(manifest: dict[str, Any], *, max_request_bytes: int, max_files: int) -> UploadPolicy:
    return UploadPolicy(
        allowed=tuple(manifest["allowed_files"]),
        max_files=min(int(manifest["max_files"]), max_files),
        max_total_bytes=int(manifest["max_upload_bytes"]),
        max_file_bytes=int(manifest["max_file_bytes"]),
        max_upload_bytes=min(int(manifest["max_upload_bytes"]), max_request_bytes),
    )


def publish_package(
    *, session: Session, course: Course, path: Path, actor: User | None, published: bool = True
) -> Assignment:
    """Store the package at ``path`` as a bundle and point the course's assignment of that slug at it.

    Publishing the same directory twice is a no-op for the bundle (same sha256); a changed package creates a
    new bundle version. Existing submissions keep the bundle they were graded with.
    """
    try:
        package = load_package(path)
        data, sha256 = build_bundle(path)
    except PackageError as exc:
        raise BadRequest(f"The package at {path} is not valid: {exc}", code="bad_package") from exc
    manifest = manifest_of(package)
    bundle = session.scalar(select(GraderBundle).where(GraderBundle.sha256 == sha256))
    if bundle is None:
        bundle = GraderBundle(
            sha256=sha256,
            slug=package.slug,
            version=package.version,
            manifest=manifest,
            data=data,
            size=len(data),
            created_by_id=actor.id if actor else None,
        )
        session.add(bundle)
        session.flush()
    assignment = session.scalar(
        select(Assignment).where(Assignment.course_id == course.id, Assignment.slug == package.slug)
    )
    created = assignment is None
    if assignment is None:
        # Deadline and weight come from the package once; after that they are the instructor's to change.
        assignment = Assignment(
            course_id=course.id, slug=package.slug, due_at=package.due_at, weight=package.weight
        )
        session.add(assignment)
    assignment.title = package.title
    assignment.summary = package.summary
    assignment.bundle_id = bundle.id
    assignment.queue = package.queue
    assignment.points = package.points
    assignment.published = published
    assignment.leaderboard_enabled = package.leaderboard is not None
    session.flush()
    audit.record(
        session=session,
        actor=actor,
        action="assignment.publish" if created else "assignment.update",
        target_type="assignment",
        target_id=assignment.id,
        course_id=course.id,
        slug=package.slug,
        bundle_sha256=sha256,
        version=package.version,
    )
    return assignment


@dataclass(frozen=True)
class AssignmentAccess:
    assignment: Assignment
    role: Role

    @property
    def is_staff(self) -> bool:
        return self.role.is_staff


def list_for_user(*, session: Session, user: User) -> list[AssignmentAccess]:
    """Every assignment the user can see: published ones in their courses, and all of them for staff."""
    result: list[AssignmentAccess] = []
    for course in session.scalars(select(Course).order_by(Course.id)):
        role = courses.role_in(session=session, user=user, course=course)
        if role is None:
            continue
        query = select(Assignment).where(Assignment.course_id == course.id)
        if not role.is_staff:
            query = query.where(Assignment.published.is_(True))
        for assignment in session.scalars(query.order_by(Assignment.due_at, Assignment.id)):
            result.append(AssignmentAccess(assignment, role))
    return result


def get_for_user(*, session: Session, user: User, course_slug: str, slug: str) -> AssignmentAccess:
    """The assignment, if the user may see it. Unknown and invisible look the same: no existence leak."""
    not_found = NotFound(f"There is no assignment {slug!r} in course {course_slug!r} that you can see.")
    course = session.scalar(select(Course).where(Course.slug == course_slug))
    if course is None:
        raise not_found
    role = courses.role_in(session=session, user=user, course=course)
    assignment = session.scalar(
        select(Assignment).where(Assignment.course_id == course.id, Assignment.slug == slug)
    )
    if role is None or assignment is None or (not assignment.published and not role.is_staff):
        raise not_found
    return AssignmentAccess(assignment, role)


def require_staff(access: AssignmentAccess) -> AssignmentAccess:
    if not access.is_staff:
        raise Forbidden("Only the course's TAs and instructors can do this.")
    return access


def submission_window_error(assignment: Assignment) -> str | None:
    """Why the assignment does not accept submissions now, or None when it does."""
    now = utcnow()
    if not assignment.published:
        return "This assignment is not published yet."
    if assignment.opens_at is not None and now < assignment.opens_at:
        return f"This assignment opens at {assignment.opens_at:%Y-%m-%d %H:%M} UTC."
    if assignment.closes_at is not None and now >= assignment.closes_at:
        return f"This assignment closed at {assignment.closes_at:%Y-%m-%d %H:%M} UTC."
    return None


def handout_archive(assignment: Assignment) -> bytes:
    """The zip students download: the handout of the bundle the assignment is graded with now."""
    try:
        return handout_zip(assignment.bundle.data, assignment.slug)
    except PackageError as exc:
        raise NotFound(f"The handout of {assignment.slug} cannot be read: {exc}") from exc
