"""Who is looking at a page: the browser session cookie only (API tokens are for the CLI), plus CSRF for forms."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request

from server.auth import service as auth_service
from server.auth.models import User
from server.auth.security import constant_time_equals
from server.deps import SESSION_COOKIE, SessionDep
from server.errors import DomainError, Forbidden
from server.pages.render import PRE_SESSION_CSRF_COOKIE


class LoginRequired(DomainError):
    """Not logged in on a page: the handler sends the browser to the login page, then back."""

    status_code = 401
    code = "login_required"


def optional_page_user(request: Request, session: SessionDep) -> User | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    browser_session = auth_service.browser_session_for(session=session, token=cookie)
    if browser_session is None or not browser_session.user.is_active:
        return None
    request.state.csrf_token = browser_session.csrf_token
    return browser_session.user


def page_user(request: Request, user: Annotated[User | None, Depends(optional_page_user)]) -> User:
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(quote(target, safe="/?=&"))
    return user


def check_form_csrf(request: Request, submitted: str | None) -> None:
    """Forms carry the session's CSRF token (or, before login, the pre-session cookie's) in a hidden field."""
    expected = getattr(request.state, "csrf_token", None) or request.cookies.get(PRE_SESSION_CSRF_COOKIE)
    if not expected or not submitted or not constant_time_equals(submitted, expected):
        raise Forbidden("This form has expired. Reload the page and try again.", code="csrf")


OptionalPageUser = Annotated[User | None, Depends(optional_page_user)]
PageUser = Annotated[User, Depends(page_user)]
