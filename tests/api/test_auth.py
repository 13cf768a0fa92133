"""Login, sessions with CSRF, API tokens."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from server.auth.models import ApiToken
from server.db import utcnow
from tests.conftest import World


def test_health_reports_database_and_broker(world: World) -> None:
    response = world.client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok", "broker_kind": "embedded"}


def test_openapi_document_lists_the_api(world: World) -> None:
    paths = world.client.get("/openapi.json").json()["paths"]
    assert "/api/courses/{course}/assignments/{slug}/submissions" in paths
    assert world.client.get("/docs").status_code == 200


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(world: World) -> None:
    for username in ("alice", "nobody-here"):
        response = world.client.post(
            "/api/auth/login", json={"username": username, "password": "wrong-password"}
        )
        assert response.status_code == 401
        assert response.json()["detail"] == "Wrong username or password."
    assert "ag_session" not in world.client.cookies


def test_login_sets_an_httponly_samesite_cookie_and_me_works(world: World) -> None:
    response = world.client.post(
        "/api/auth/login", json={"username": "alice", "password": world.alice.password}
    )
    assert response.status_code == 200
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    me = world.client.get("/api/auth/me").json()
    assert me["user"]["username"] == "alice"
    assert me["user"]["enrollments"] == [
        {
            "course": world.course,
            "course_title": me["user"]["enrollments"][0]["course_title"],
            "role": "student",
        }
    ]
    assert me["csrf_token"] == response.json()["csrf_token"]


def test_cookie_requests_that_change_state_need_the_csrf_token(world: World) -> None:
    login = world.client.post("/api/auth/login", json={"username": "alice", "password": world.alice.password})
    csrf = login.json()["csrf_token"]
    refused = world.client.post("/api/tokens", json={"name": "laptop"})
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    wrong = world.client.post("/api/tokens", json={"name": "laptop"}, headers={"x-csrf-token": "forged"})
    assert wrong.status_code == 403
    accepted = world.client.post("/api/tokens", json={"name": "laptop"}, headers={"x-csrf-token": csrf})
    assert accepted.status_code == 201
    assert accepted.json()["token"].startswith("agt_")


def test_bearer_requests_need_no_csrf_token(world: World) -> None:
    response = world.client.post("/api/tokens", json={"name": "ci"}, headers=world.alice.headers)
    assert response.status_code == 201


def test_logout_ends_the_session_on_the_server(world: World) -> None:
    login = world.client.post("/api/auth/login", json={"username": "alice", "password": world.alice.password})
    stolen_cookie = world.client.cookies.get("ag_session")
    out = world.client.post("/api/auth/logout", headers={"x-csrf-token": login.json()["csrf_token"]})
    assert out.status_code == 204
    world.client.cookies.clear()
    world.client.cookies.set("ag_session", stolen_cookie)
    replay = world.client.get("/api/auth/me")
    assert replay.status_code == 401


def test_token_login_returns_a_working_token(world: World) -> None:
    response = world.client.post(
        "/api/auth/token", json={"username": "bob", "password": world.bob.password, "token_name": "cli"}
    )
    assert response.status_code == 201
    token = response.json()["token"]
    me = world.client.get("/api/auth/me", headers={"authorization": f"Bearer {token}"})
    assert me.json()["user"]["username"] == "bob"


def test_wrong_malformed_expired_and_revoked_tokens_are_refused(world: World) -> None:
    wrong = world.client.get("/api/auth/me", headers={"authorization": "Bearer agt_not-a-real-token"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["detail"]
    malformed = world.client.get("/api/auth/me", headers={"authorization": "Basic abc"})
    assert malformed.status_code == 401 and "Bearer" in malformed.json()["detail"]
    with world.session() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.user_id == world.bob.user_id)
            .values(expires_at=utcnow() - timedelta(days=1))
        )
        session.commit()
    expired = world.client.get("/api/auth/me", headers=world.bob.headers)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    tokens = world.client.get("/api/tokens", headers=world.alice.headers).json()
    assert (
        world.client.delete(f"/api/tokens/{tokens[0]['id']}", headers=world.alice.headers).status_code == 204
    )
    revoked = world.client.get("/api/auth/me", headers=world.alice.headers)
    assert revoked.status_code == 401


def test_a_user_cannot_revoke_someone_elses_token(world: World) -> None:
    bobs = world.client.get("/api/tokens", headers=world.bob.headers).json()
    response = world.client.delete(f"/api/tokens/{bobs[0]['id']}", headers=world.alice.headers)
    assert response.status_code == 404
    assert world.client.get("/api/auth/me", headers=world.bob.headers).status_code == 200


def test_changing_the_password_needs_the_current_one_and_a_strong_new_one(world: World) -> None:
    bad = world.client.post(
        "/api/auth/password",
        json={"current_password": "nope-nope", "new_password": "a-new-long-password"},
        headers=world.alice.headers,
    )
    assert bad.status_code == 401
    weak = world.client.post(
        "/api/auth/password",
        json={"current_password": world.alice.password, "new_password": "short"},
        headers=world.alice.headers,
    )
    assert weak.status_code == 400 and "at least 8" in weak.json()["detail"]
    ok = world.client.post(
        "/api/auth/password",
        json={"current_password": world.alice.password, "new_password": "a-new-long-password"},
        headers=world.alice.headers,
    )
    assert ok.status_code == 204
    login = world.client.post(
        "/api/auth/login", json={"username": "alice", "password": "a-new-long-password"}
    )
    assert login.status_code == 200


def test_unauthenticated_requests_are_told_how_to_authenticate(world: World) -> None:
    response = world.client.get("/api/assignments")
    assert response.status_code == 401
    assert "log in" in response.json()["detail"]


def test_password_guessing_is_throttled_per_account_and_address(world) -> None:
    from server.auth.service import MAX_LOGIN_FAILURES

    for _ in range(MAX_LOGIN_FAILURES):
        wrong = world.client.post("/api/auth/login", json={"username": "alice", "password": "guess-guess"})
        assert wrong.status_code == 401
    blocked = world.client.post(
        "/api/auth/login", json={"username": "alice", "password": world.alice.password}
    )
    assert blocked.status_code == 429 and blocked.json()["code"] == "login_throttled"
    assert "Try again in" in blocked.json()["detail"]
    assert (
        world.client.post(
            "/api/auth/token", json={"username": "Alice", "password": world.alice.password}
        ).status_code
        == 429
    )  # the CLI's login counts the same account, whatever the case
    other = world.client.post("/api/auth/login", json={"username": "bob", "password": world.bob.password})
    assert other.status_code == 200  # other accounts are unaffected


def test_guessing_the_current_password_through_a_session_is_throttled_too(world) -> None:
    from server.auth.service import MAX_LOGIN_FAILURES

    for _ in range(MAX_LOGIN_FAILURES):
        wrong = world.client.post(
            "/api/auth/password",
            json={"current_password": "guess-guess", "new_password": "a-new-long-password"},
            headers=world.alice.headers,
        )
        assert wrong.status_code == 401
    blocked = world.client.post(
        "/api/auth/password",
        json={"current_password": world.alice.password, "new_password": "a-new-long-password"},
        headers=world.alice.headers,
    )
    assert blocked.status_code == 429 and blocked.json()["code"] == "login_throttled"
