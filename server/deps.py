"""Request dependencies: the database session and who is asking. Authorization is decided here, once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from server.auth import service as auth_service
from server.auth.models import User
from server.auth.security import constant_time_equals
from server.db import session_scope
from server.errors import Forbidden, NotAuthenticated
from server.settings import Settings, get_settings

SESSION_COOKIE = "ag_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_db() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _authenticated_user(request: Request, session: SessionDep) -> User:
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise NotAuthenticated(
                "The Authorization header must be 'Bearer <token>'.", code="bad_auth_header"
            )
        user = auth_service.user_for_api_token(session=session, secret=secret.strip())
        session.commit()  # records last_used_at
        request.state.auth_method = "token"
        return user
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        browser_session = auth_service.browser_session_for(session=session, token=cookie)
        if browser_session is not None:
            request.state.auth_method = "cookie"
            request.state.csrf_token = browser_session.csrf_token
            return browser_session.user
        raise NotAuthenticated("Your session has expired. Please log in again.", code="session_expired")
    raise NotAuthenticated("Please log in (or send an API token as 'Authorization: Bearer <token>').")


async def current_user(request: Request, user: Annotated[User, Depends(_authenticated_user)]) -> User:
    """The logged-in user; state-changing browser requests must also carry the session's CSRF token."""
    if request.method not in SAFE_METHODS and request.state.auth_method == "cookie":
        sent = request.headers.get(CSRF_HEADER)
        content_type = request.headers.get("content-type", "")
        if not sent and content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form_value = (await request.form()).get(CSRF_FORM_FIELD)
            sent = form_value if isinstance(form_value, str) else None
        if not sent or not constant_time_equals(sent, request.state.csrf_token):
            raise Forbidden(
                "This request is missing its CSRF token (reload the page and try again).", code="csrf"
            )
    return user


CurrentUser = Annotated[User, Depends(current_user)]
