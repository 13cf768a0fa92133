"""Choosing the name a student is shown under on the course's leaderboards."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from server.courses import service as courses
from server.courses.models import Course, Role
from server.deps import CurrentUser, SessionDep
from server.errors import Forbidden, NotFound
from server.leaderboard import aliases

router = APIRouter(prefix="/api", tags=["leaderboard"])


class AliasIn(BaseModel):
    alias: str | None = Field(
        description="3 to 40 characters: letters, digits, spaces, _ - . (null: stay anonymous)"
    )


class AliasOut(BaseModel):
    alias: str | None
    anonymous: bool
    shown_as: str


class AliasClearIn(BaseModel):
    reason: str = Field(max_length=500)


def _member_course(session: SessionDep, user: CurrentUser, slug: str) -> tuple[Course, Role]:
    """The course and the user's role in it; a course they do not belong to looks like none at all."""
    course = session.scalar(select(Course).where(Course.slug == slug))
    role = courses.role_in(session=session, user=user, course=course) if course is not None else None
    if course is None or role is None:
        raise NotFound(f"There is no course {slug!r} that you belong to.")
    return course, role


def _alias_out(alias: str | None) -> AliasOut:
    return AliasOut(
        alias=alias,
        anonymous=alias is None,
        shown_as=alias if alias is not None else "a pseudonym (anon-…), different on each assignment",
    )


@router.get("/courses/{course}/me/alias", response_model=AliasOut)
def my_alias(course: str, session: SessionDep, user: CurrentUser) -> AliasOut:
    target, _ = _member_course(session, user, course)
    return _alias_out(aliases.get_alias(session=session, course=target, user=user))


@router.put("/courses/{course}/me/alias", response_model=AliasOut)
def set_my_alias(course: str, body: AliasIn, session: SessionDep, user: CurrentUser) -> AliasOut:
    """Choose how other students see you on the leaderboards; null makes you anonymous again."""
    target, _ = _member_course(session, user, course)
    alias = aliases.set_alias(session=session, course=target, user=user, alias=body.alias)
    session.commit()
    return _alias_out(alias)


@router.post("/courses/{course}/aliases/{username}/clear", status_code=204)
def clear_alias(
    course: str, username: str, body: AliasClearIn, session: SessionDep, user: CurrentUser
) -> None:
    """Staff remove a student's alias (offensive or misleading); the reason goes to the audit log."""
    target, role = _member_course(session, user, course)
    if not role.is_staff:
        raise Forbidden("Only the course's TAs and instructors can remove a student's alias.")
    aliases.clear_alias(session=session, course=target, actor=user, username=username, reason=body.reason)
    session.commit()
