"""Pages everyone has: log in and out, the account page (password, language, API tokens), the language switch."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from server.auth import service as auth_service
from server.auth.models import User
from server.auth.router import client_ip, set_session_cookie
from server.deps import SESSION_COOKIE, SessionDep, SettingsDep
from server.errors import DomainError, TooManyRequests
from server.pages import i18n
from server.pages.deps import OptionalPageUser, PageUser, check_form_csrf
from server.pages.render import PRE_SESSION_CSRF_COOKIE, render

router = APIRouter(include_in_schema=False)


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site paths: never redirect to another origin after login (open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/", response_class=HTMLResponse)
def home(user: OptionalPageUser) -> Response:
    return _see_other("/dashboard" if user is not None else "/login")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, user: OptionalPageUser, next: str | None = None) -> Response:
    if user is not None:
        return _see_other(safe_next(next))
    token = request.cookies.get(PRE_SESSION_CSRF_COOKIE) or secrets.token_urlsafe(24)
    request.state.csrf_token = token
    response = render(request, "login.html", user=None, next=safe_next(next, ""), username="", error=None)
    response.set_cookie(PRE_SESSION_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login")
    return response


def _login_refused(request: Request, *, status_code: int, next: str, username: str, error: str) -> Response:
    """The login form again, saying why: what the user typed stays; the password never comes back."""
    request.state.csrf_token = request.cookies.get(PRE_SESSION_CSRF_COOKIE)
    return render(
        request,
        "login.html",
        user=None,
        status_code=status_code,
        next=safe_next(next, ""),
        username=username,
        error=error,
    )


@router.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    check_form_csrf(request, csrf_token)
    try:
        user = auth_service.authenticate_throttled(
            session=session, username=username.strip(), password=password, client_ip=client_ip(request)
        )
    except TooManyRequests as exc:
        return _login_refused(request, status_code=429, next=next, username=username, error=exc.message)
    except DomainError:
        error = i18n.translator(i18n.negotiate(request, None))("login.error")
        return _login_refused(request, status_code=400, next=next, username=username, error=error)
    token, _ = auth_service.start_browser_session(
        session=session, user=user, hours=settings.auth.session_hours
    )
    if user.language is None and request.cookies.get(i18n.LANGUAGE_COOKIE) in i18n.LANGUAGES:
        user.language = request.cookies[i18n.LANGUAGE_COOKIE]
    session.commit()
    response = _see_other(safe_next(next))
    set_session_cookie(response, token, settings.auth)
    response.delete_cookie(PRE_SESSION_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(
    request: Request,
    session: SessionDep,
    user: PageUser,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    check_form_csrf(request, csrf_token)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        auth_service.end_browser_session(session=session, token=cookie)
        session.commit()
    response = _see_other("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/lang/{language}")
def switch_language(
    language: str, session: SessionDep, user: OptionalPageUser, next: str | None = None
) -> Response:
    """The language switch: remembered for the user (and in a cookie, for the login page)."""
    target = safe_next(next)
    if language not in i18n.LANGUAGES:
        return _see_other(target)
    if user is not None:
        user.language = language
        session.commit()
    response = _see_other(target)
    response.set_cookie(i18n.LANGUAGE_COOKIE, language, max_age=365 * 86400, samesite="lax", path="/")
    return response


def _account(
    request: Request, session: Session, user: User, *, status_code: int = 200, **context: Any
) -> Response:
    tokens = auth_service.list_api_tokens(session=session, user=user)
    defaults: dict[str, Any] = {
        "password_error": None,
        "password_done": False,
        "token_error": None,
        "new_token": None,
        "token_name": "",
    }
    return render(
        request, "account.html", user=user, status_code=status_code, tokens=tokens, **{**defaults, **context}
    )


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, session: SessionDep, user: PageUser) -> Response:
    return _account(request, session, user)


@router.post("/account/password", response_class=HTMLResponse)
def change_password(
    request: Request,
    session: SessionDep,
    user: PageUser,
    current: Annotated[str, Form(max_length=1000)] = "",
    new: Annotated[str, Form(max_length=1000)] = "",
    confirm: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    check_form_csrf(request, csrf_token)
    t = i18n.translator(i18n.negotiate(request, user))
    try:
        # Throttled like the login form: a borrowed session must not become a way to guess the password.
        auth_service.authenticate_throttled(
            session=session, username=user.username, password=current, client_ip=client_ip(request)
        )
    except TooManyRequests as exc:
        return _account(request, session, user, status_code=429, password_error=exc.message)
    except DomainError:
        return _account(request, session, user, status_code=400, password_error=t("account.password.wrong"))
    if new != confirm:
        return _account(
            request, session, user, status_code=400, password_error=t("account.password.mismatch")
        )
    try:
        auth_service.set_password(session=session, user=user, password=new)
    except DomainError as exc:
        return _account(request, session, user, status_code=400, password_error=exc.message)
    session.commit()
    return _account(request, session, user, password_done=True)


@router.post("/account/tokens", response_class=HTMLResponse)
def create_token(
    request: Request,
    session: SessionDep,
    user: PageUser,
    name: Annotated[str, Form(max_length=200)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    check_form_csrf(request, csrf_token)
    t = i18n.translator(i18n.negotiate(request, user))
    if not name.strip():
        return _account(
            request, session, user, status_code=400, token_error=t("account.tokens.name_required")
        )
    secret, _ = auth_service.create_api_token(
        session=session, user=user, name=name.strip()[:100], expires_in_days=180
    )
    session.commit()
    return _account(request, session, user, new_token=secret)


@router.post("/account/tokens/{token_id}/revoke", response_class=HTMLResponse)
def revoke_token(
    request: Request,
    token_id: int,
    session: SessionDep,
    user: PageUser,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    check_form_csrf(request, csrf_token)
    auth_service.revoke_api_token(session=session, user=user, token_id=token_id)
    session.commit()
    return _see_other("/account")
