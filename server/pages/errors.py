"""Errors on pages are pages: a plain-language message in the viewer's language, never a stack trace or JSON."""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from server.pages import i18n
from server.pages.deps import LoginRequired
from server.pages.render import render

log = logging.getLogger(__name__)


def wants_page(request: Request) -> bool:
    """Page routes answer with HTML; everything under /api (and the docs) stays JSON."""
    path = request.url.path
    return not (path.startswith("/api") or path.startswith("/docs") or path == "/openapi.json")


def _viewer(request: Request):  # type: ignore[no-untyped-def]
    """The logged-in user if the session cookie is valid (best effort: errors must render without a database)."""
    from server.db import get_session_factory
    from server.pages.deps import optional_page_user

    try:
        session = get_session_factory()()
    except Exception:
        return None
    try:
        user = optional_page_user(request, session)
        if user is not None:
            session.expunge(user)
        return user
    except Exception:
        return None
    finally:
        session.close()


def error_page(request: Request, status_code: int, message: str | None = None) -> Response:
    if status_code == LoginRequired.status_code and message is not None:
        return RedirectResponse(f"/login?next={quote(message, safe='/')}", status_code=303)
    user = _viewer(request)
    t = i18n.translator(i18n.negotiate(request, user))
    heading_key = f"error.{status_code}"
    heading = t(heading_key) if heading_key in i18n.catalog(i18n.DEFAULT_LANGUAGE) else t("error.400")
    if status_code >= 500:
        message = t("error.500.message")
    elif status_code == 404 and not message:
        message = t("error.404")
    response = render(
        request,
        "error.html",
        user=user,
        status_code=status_code,
        title=heading,
        heading=heading,
        message=message or heading,
    )
    return response
