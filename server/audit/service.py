"""Recording staff actions."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from server.audit.models import AuditEvent
from server.auth.models import User


def record(
    *,
    session: Session,
    actor: User | None,
    action: str,
    target_type: str,
    target_id: str | int,
    course_id: int | None = None,
    **details: Any,
) -> AuditEvent:
    event = AuditEvent(
        actor_id=actor.id if actor else None,
        course_id=course_id,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        details=details,
    )
    session.add(event)
    return event
