"""Leaderboard aliases: the name a student chooses to be shown under (none: a stable pseudonym per assignment).

An alias must not let one student pass for another or for the staff, so besides the character rules it is
compared, ignoring case and the separators " _-.", against every other alias in the course, every member's
username (and the administrators'), the staff's display names, and a few reserved words. Letters are ASCII or
Chinese characters only: letters of other alphabets that look like Latin ones would defeat the comparison.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.audit import service as audit
from server.auth.models import User
from server.courses.models import Course, Enrollment, Role
from server.errors import BadRequest, Conflict, Forbidden, NotFound

MIN_CHARS = 3
MAX_CHARS = 40
SEPARATORS = " _-."
# Whole words that would make an alias look like a member of the staff or the system.
RESERVED_WORDS = frozenset(
    {
        "admin",
        "administrator",
        "staff",
        "instructor",
        "teacher",
        "professor",
        "prof",
        "ta",
        "tutor",
        "moderator",
        "system",
        "root",
        "autograder",
        "anonymous",
        "you",
    }
)
_WORD_SPLIT = re.compile(r"[ _\-.]+")


def _allowed(char: str) -> bool:
    if char.isascii():
        return char.isalnum() or char in SEPARATORS
    # CJK Unified Ideographs and Extension A: names in Chinese, with no look-alikes of Latin letters.
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"


def comparison_key(name: str) -> str:
    """What two names are compared by: case and separators ignored ("A.lice" and "alice" collide)."""
    return "".join(char for char in name.casefold() if char not in SEPARATORS)


def normalize(alias: str) -> str:
    """The alias as stored, or a BadRequest that says what to change."""
    text = " ".join(alias.split())
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        raise BadRequest(
            f"An alias is {MIN_CHARS} to {MAX_CHARS} characters long (yours has {len(text)}).",
            code="bad_alias",
        )
    refused = sorted({char for char in text if not _allowed(char)})
    if refused:
        shown = " ".join(repr(char) for char in refused[:5])
        raise BadRequest(
            "An alias may use letters (A-Z, Chinese characters), digits, spaces and _ - . only; "
            f"remove {shown}.",
            code="bad_alias",
        )
    if not comparison_key(text):
        raise BadRequest("An alias needs at least one letter or digit.", code="bad_alias")
    if comparison_key(text).startswith("anon"):
        raise BadRequest(
            "Aliases starting with 'anon' are reserved for students who stay anonymous.",
            code="reserved_alias",
        )
    words = {word.casefold() for word in _WORD_SPLIT.split(text) if word}
    reserved = sorted(words & RESERVED_WORDS)
    if reserved or comparison_key(text) in RESERVED_WORDS:
        raise BadRequest(
            f"An alias cannot contain {reserved[0] if reserved else text!r}: it would look like the staff "
            "or the system.",
            code="reserved_alias",
        )
    return text


def _taken_keys(session: Session, course: Course, user: User) -> set[str]:
    """Every name the alias must not collide with, except the student's own username and alias."""
    keys: set[str] = set()
    members = session.execute(
        select(Enrollment.user_id, Enrollment.role, Enrollment.alias, User.username, User.display_name)
        .join(User, User.id == Enrollment.user_id)
        .where(Enrollment.course_id == course.id)
    ).all()
    for user_id, role, alias, username, display_name in members:
        if user_id == user.id:
            continue
        keys.add(comparison_key(username))
        if alias:
            keys.add(comparison_key(alias))
        if role.is_staff and display_name:
            keys.add(comparison_key(display_name))
    for username, display_name in session.execute(
        select(User.username, User.display_name).where(User.is_admin.is_(True), User.id != user.id)
    ):
        keys.update({comparison_key(username), comparison_key(display_name or "")})
    keys.discard("")
    return keys


def _enrollment(session: Session, course: Course, user: User) -> Enrollment:
    enrollment = session.scalar(
        select(Enrollment).where(Enrollment.course_id == course.id, Enrollment.user_id == user.id)
    )
    if enrollment is None or enrollment.role != Role.student:
        raise Forbidden("Only the course's students choose a leaderboard alias.", code="not_a_student")
    return enrollment


def get_alias(*, session: Session, course: Course, user: User) -> str | None:
    return _enrollment(session, course, user).alias


def set_alias(*, session: Session, course: Course, user: User, alias: str | None) -> str | None:
    """Set (or with None clear) the student's alias in ``course``. The caller commits.

    Concurrent choices of colliding aliases are serialized: on PostgreSQL by a lock on the course row, on
    SQLite by writing first (which takes the database's write lock) and checking afterwards, in one transaction.
    """
    enrollment = _enrollment(session, course, user)
    text = normalize(alias) if alias is not None else None
    session.execute(select(Course.id).where(Course.id == course.id).with_for_update())
    enrollment.alias = text
    try:
        session.flush()
    except IntegrityError:  # the exact alias is another student's (the database's own unique constraint)
        raise _taken() from None
    if text is not None and comparison_key(text) in _taken_keys(session, course, user):
        raise _taken()
    return text


def _taken() -> Conflict:
    return Conflict(
        "That alias is not available: it is taken, or too close to the name of someone in the course. "
        "Please choose another.",
        code="alias_taken",
    )


def clear_alias(*, session: Session, course: Course, actor: User, username: str, reason: str) -> None:
    """Staff remove a student's alias (an offensive or misleading one); the student is anonymous again."""
    enrollment = session.scalar(
        select(Enrollment)
        .join(User, User.id == Enrollment.user_id)
        .where(Enrollment.course_id == course.id, User.username == username, Enrollment.role == Role.student)
    )
    if enrollment is None:
        raise NotFound(f"There is no student {username!r} in this course.")
    text = " ".join(reason.split())
    if not text:
        raise BadRequest("Give a reason for removing the alias.", code="reason_required")
    audit.record(
        session=session,
        actor=actor,
        action="alias.clear",
        target_type="enrollment",
        target_id=enrollment.id,
        course_id=course.id,
        username=username,
        alias=enrollment.alias,
        reason=text,
    )
    enrollment.alias = None
