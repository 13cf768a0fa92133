"""A TA's points and comment for one rubric criterion of one submission."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.auth.models import User
from server.db import Base, UTCDateTime, utcnow


class RubricScore(Base):
    __tablename__ = "rubric_scores"
    __table_args__ = (UniqueConstraint("submission_id", "criterion"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"), index=True)
    criterion: Mapped[str] = mapped_column(String(100))
    points: Mapped[float] = mapped_column(Float)
    comment: Mapped[str] = mapped_column(Text)
    grader_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    grader: Mapped[User | None] = relationship(lazy="joined")
