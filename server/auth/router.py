"""Login, logout, who am I, password change and API tokens."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from server.auth import service
from server.auth.models import ApiToken, User
from server.courses.models import Enrollment
from server.deps import SESSION_COOKIE, CurrentUser, SessionDep, SettingsDep
from server.errors import BadRequest
from server.settings import AuthSettings

router = APIRouter(prefix="/api", tags=["auth"])


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenLoginIn(LoginIn):
    token_name: str = Field(default="cli", min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class EnrollmentOut(BaseModel):
    course: str
    course_title: str
    role: str


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str
    is_admin: bool
    enrollments: list[EnrollmentOut]


class MeOut(BaseModel):
    user: UserOut
    csrf_token: str | None = None


class PasswordIn(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class NewTokenOut(TokenOut):
    token: str


def client_ip(request: Request) -> str:
    """The caller's address as the server sees it (behind a proxy: what uvicorn's proxy headers say)."""
    return request.client.host if request.client else "unknown"


def set_session_cookie(response: Response, token: str, auth: AuthSettings) -> None:
    """The browser session cookie, for the API's login and the login page alike: HttpOnly, SameSite=Lax, and
    gone when the session would expire anyway."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(auth.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=auth.cookie_secure,
        path="/",
    )


def user_out(session: SessionDep, user: User) -> UserOut:
    enrollments = session.scalars(
        select(Enrollment).where(Enrollment.user_id == user.id).order_by(Enrollment.id)
    )
    return UserOut(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        is_admin=user.is_admin,
        enrollments=[
            EnrollmentOut(course=e.course.slug, course_title=e.course.title, role=e.role.value)
            for e in enrollments
        ],
    )


def token_out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        name=token.name,
        prefix=token.prefix,
        created_at=token.created_at,
        expires_at=token.expires_at,
        last_used_at=token.last_used_at,
    )


@router.post("/auth/login", response_model=MeOut)
def login(
    body: LoginIn, request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> MeOut:
    """Start a browser session: sets an HttpOnly, SameSite=Lax cookie and returns the CSRF token."""
    user = service.authenticate_throttled(
        session=session, username=body.username, password=body.password, client_ip=client_ip(request)
    )
    token, browser_session = service.start_browser_session(
        session=session, user=user, hours=settings.auth.session_hours
    )
    session.commit()
    set_session_cookie(response, token, settings.auth)
    return MeOut(user=user_out(session, user), csrf_token=browser_session.csrf_token)


@router.post("/auth/logout", status_code=204)
def logout(request: Request, response: Response, session: SessionDep, user: CurrentUser) -> None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        service.end_browser_session(session=session, token=cookie)
        session.commit()
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/auth/me", response_model=MeOut)
def me(request: Request, session: SessionDep, user: CurrentUser) -> MeOut:
    return MeOut(user=user_out(session, user), csrf_token=getattr(request.state, "csrf_token", None))


@router.post("/auth/password", status_code=204)
def change_password(body: PasswordIn, request: Request, session: SessionDep, user: CurrentUser) -> None:
    # Throttled like logins: a borrowed session or token must not become a way to guess the password.
    service.authenticate_throttled(
        session=session, username=user.username, password=body.current_password, client_ip=client_ip(request)
    )
    if body.current_password == body.new_password:
        raise BadRequest("The new password must differ from the current one.", code="same_password")
    service.set_password(session=session, user=user, password=body.new_password)
    session.commit()


@router.post("/auth/token", response_model=NewTokenOut, status_code=201)
def token_login(body: TokenLoginIn, request: Request, session: SessionDep) -> NewTokenOut:
    """Exchange a username and password for an API token (what `autograder login` does)."""
    user = service.authenticate_throttled(
        session=session, username=body.username, password=body.password, client_ip=client_ip(request)
    )
    secret, token = service.create_api_token(
        session=session, user=user, name=body.token_name, expires_in_days=body.expires_in_days
    )
    session.commit()
    return NewTokenOut(token=secret, **token_out(token).model_dump())


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(session: SessionDep, user: CurrentUser) -> list[TokenOut]:
    return [token_out(t) for t in service.list_api_tokens(session=session, user=user)]


@router.post("/tokens", response_model=NewTokenOut, status_code=201)
def create_token(body: TokenIn, session: SessionDep, user: CurrentUser) -> NewTokenOut:
    secret, token = service.create_api_token(
        session=session, user=user, name=body.name, expires_in_days=body.expires_in_days
    )
    session.commit()
    return NewTokenOut(token=secret, **token_out(token).model_dump())


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: int, session: SessionDep, user: CurrentUser) -> None:
    service.revoke_api_token(session=session, user=user, token_id=token_id)
    session.commit()
