"""Courses and who is enrolled in them with which role."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.auth.models import User
from server.db import Base, UTCDateTime, utcnow


class Role(enum.StrEnum):
    student = "student"
    ta = "ta"
    instructor = "instructor"

    @property
    def is_staff(self) -> bool:
        return self in (Role.ta, Role.instructor)


class Course(Base):
    __tablename__ = "courses"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    # IANA zone the course's deadlines are shown in; they are stored in UTC.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Late days each student may spend across the course's assignments whose policy is "late_days".
    late_days_budget: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Enrollment(Base):
    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("course_id", "user_id"),
        UniqueConstraint("course_id", "alias", name="uq_enrollments_course_id_alias"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    # The name the student chose for leaderboards (None: anonymous, shown as a stable pseudonym).
    alias: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")
    course: Mapped[Course] = relationship(lazy="joined")
