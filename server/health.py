"""Liveness and readiness: can we reach the database and the broker?"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from server.deps import SessionDep, SettingsDep
from server.queue import get_celery

router = APIRouter(prefix="/api", tags=["health"])


def broker_ok() -> bool:
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception:
        return False
    return True


@router.get("/health")
def health(session: SessionDep, settings: SettingsDep) -> Any:
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
    except Exception:
        database = "unreachable"
    broker = "ok" if broker_ok() else "unreachable"
    body = {
        "status": "ok" if database == broker == "ok" else "degraded",
        "database": database,
        "broker": broker,
        "broker_kind": "embedded" if settings.embedded_broker else "external",
    }
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
