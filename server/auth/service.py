"""Accounts, browser sessions and API tokens."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from server.audit.models import AuditEvent
from server.auth import security
from server.auth.models import ApiToken, BrowserSession, User
from server.db import utcnow
from server.errors import BadRequest, Conflict, NotAuthenticated, NotFound, TooManyRequests

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$")


def validate_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):
        raise BadRequest(
            "A username is 2 to 64 characters: letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit (got {username!r}).",
            code="bad_username",
        )
    return username


def validate_password(password: str) -> str:
    if len(password) < security.MIN_PASSWORD_LENGTH:
        raise BadRequest(
            f"A password needs at least {security.MIN_PASSWORD_LENGTH} characters.", code="weak_password"
        )
    return password


def create_user(
    *,
    session: Session,
    username: str,
    password: str | None,
    display_name: str = "",
    email: str | None = None,
    is_admin: bool = False,
) -> User:
    validate_username(username)
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"The username {username!r} is taken.", code="username_taken")
    user = User(
        username=username,
        display_name=display_name or username,
        email=email,
        password_hash=security.hash_password(validate_password(password)) if password else None,
        is_admin=is_admin,
    )
    session.add(user)
    session.flush()
    return user


def set_password(*, session: Session, user: User, password: str) -> None:
    user.password_hash = security.hash_password(validate_password(password))
    # A new password ends every other login of this user.
    session.execute(delete(BrowserSession).where(BrowserSession.user_id == user.id))


def authenticate(*, session: Session, username: str, password: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    ok = security.verify_password(password, user.password_hash if user else None)
    if user is None or not ok or not user.is_active:
        raise NotAuthenticated("Wrong username or password.", code="bad_credentials")
    assert user.password_hash is not None
    if security.needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
    return user


# Password guessing: after this many failed logins for one username from one address within the window, that
# pair must wait until the oldest failure leaves the window. Other addresses (the real student) are unaffected.
LOGIN_FAILURE_WINDOW = timedelta(minutes=15)
MAX_LOGIN_FAILURES = 10


def _login_key(username: str) -> str:
    return username.strip().lower()[:64]


def authenticate_throttled(*, session: Session, username: str, password: str, client_ip: str) -> User:
    """``authenticate`` with a limit on guessing: failures are audit-logged and counted per username and address.

    A failure is committed here, before the error propagates, so that it counts even though the request fails.
    """
    key = _login_key(username)
    now = utcnow()
    since = now - LOGIN_FAILURE_WINDOW
    failures = [
        created_at
        for details, created_at in session.execute(
            select(AuditEvent.details, AuditEvent.created_at).where(
                AuditEvent.action == "auth.login_failed",
                AuditEvent.target_id == key,
                AuditEvent.created_at >= since,
            )
        )
        if (details or {}).get("ip") == client_ip
    ]
    if len(failures) >= MAX_LOGIN_FAILURES:
        retry_at = min(failures) + LOGIN_FAILURE_WINDOW
        minutes = max(1, int((retry_at - now).total_seconds() // 60) + 1)
        raise TooManyRequests(
            f"Too many failed logins for this account from your address. Try again in {minutes} minute(s), "
            "or ask a TA to reset your password.",
            code="login_throttled",
            retry_at=retry_at,
        )
    try:
        return authenticate(session=session, username=username, password=password)
    except NotAuthenticated:
        session.add(
            AuditEvent(
                action="auth.login_failed", target_type="login", target_id=key, details={"ip": client_ip}
            )
        )
        session.commit()
        raise


def start_browser_session(*, session: Session, user: User, hours: float) -> tuple[str, BrowserSession]:
    token = security.new_session_token()
    browser_session = BrowserSession(
        token_hash=security.digest(token),
        user_id=user.id,
        csrf_token=security.new_session_token(),
        expires_at=utcnow() + timedelta(hours=hours),
    )
    session.add(browser_session)
    session.flush()
    return token, browser_session


def browser_session_for(*, session: Session, token: str) -> BrowserSession | None:
    found = session.scalar(select(BrowserSession).where(BrowserSession.token_hash == security.digest(token)))
    if found is None or found.expires_at <= utcnow() or not found.user.is_active:
        return None
    return found


def end_browser_session(*, session: Session, token: str) -> None:
    session.execute(delete(BrowserSession).where(BrowserSession.token_hash == security.digest(token)))


def create_api_token(
    *, session: Session, user: User, name: str, expires_in_days: int | None
) -> tuple[str, ApiToken]:
    name = name.strip()
    if not name or len(name) > 100:
        raise BadRequest("A token needs a name of 1 to 100 characters.", code="bad_token_name")
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise BadRequest("A token expires after 1 to 3650 days.", code="bad_token_expiry")
    secret = security.new_api_token()
    token = ApiToken(
        user_id=user.id,
        name=name,
        prefix=secret[:10],
        token_hash=security.digest(secret),
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(token)
    session.flush()
    return secret, token


def user_for_api_token(*, session: Session, secret: str) -> User:
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == security.digest(secret)))
    now = utcnow()
    if token is None or token.revoked_at is not None:
        raise NotAuthenticated("This API token is not valid. Create a new one with 'autograder login'.")
    if token.expires_at is not None and token.expires_at <= now:
        raise NotAuthenticated(
            f"This API token expired on {token.expires_at:%Y-%m-%d %H:%M} UTC. "
            "Create a new one with 'autograder login'.",
            code="token_expired",
        )
    if not token.user.is_active:
        raise NotAuthenticated("This account is disabled.", code="account_disabled")
    # Touch at most once a minute so reads do not turn into a write per request.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        token.last_used_at = now
    return token.user


def list_api_tokens(*, session: Session, user: User) -> list[ApiToken]:
    return list(
        session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.id)
        )
    )


def revoke_api_token(*, session: Session, user: User, token_id: int) -> None:
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != user.id or token.revoked_at is not None:
        raise NotFound("No such token.")
    token.revoked_at = utcnow()
