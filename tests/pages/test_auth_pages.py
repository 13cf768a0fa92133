"""Log in and out, the account page, the language switch and error pages, as a browser sees them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import select

from server.auth.models import ApiToken, User
from server.pages.i18n import CATALOG_DIR, catalog
from server.pages.render import TEMPLATE_DIR
from tests.conftest import World
from tests.pages.conftest import csrf_of, log_in


def test_the_start_page_sends_a_visitor_to_the_login_page(browser):
    response = browser.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    page = browser.get("/account", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/account"


def test_a_wrong_password_shows_an_error_and_keeps_the_username(browser, world: World):
    form = browser.get("/login")
    response = browser.post(
        "/login",
        data={"username": "alice", "password": "nope-nope", "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert response.status_code == 400
    assert "Wrong username or password." in response.text
    assert 'value="alice"' in response.text and "nope-nope" not in response.text
    assert 'aria-invalid="true"' in response.text


def test_logging_in_returns_to_the_page_asked_for_and_never_to_another_site(browser, world: World):
    log_in(browser, world.alice, next_path="/account")
    assert "Signed in as alice." in browser.get("/account").text
    browser.cookies.clear()
    page = browser.get("/login")
    response = browser.post(
        "/login",
        data={
            "username": "alice",
            "password": world.alice.password,
            "next": "//evil.example/x",
            "csrf_token": csrf_of(page.text),
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_a_form_without_its_csrf_token_is_refused_with_a_page(browser, world: World):
    log_in(browser, world.alice)
    response = browser.post("/account/tokens", data={"name": "laptop"})
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "This form has expired" in response.text and "Traceback" not in response.text


def test_tokens_are_shown_once_and_can_be_revoked(browser, world: World):
    log_in(browser, world.alice)
    page = browser.get("/account")
    created = browser.post("/account/tokens", data={"name": "laptop", "csrf_token": csrf_of(page.text)})
    secret = re.search(r'id="new-token">([^<]+)<', created.text).group(1)
    assert world.client.get("/api/auth/me", headers={"authorization": f"Bearer {secret}"}).status_code == 200
    again = browser.get("/account")
    assert secret not in again.text and "laptop" in again.text
    with world.session() as session:
        token = session.scalar(select(ApiToken).where(ApiToken.name == "laptop"))
    browser.post(f"/account/tokens/{token.id}/revoke", data={"csrf_token": csrf_of(again.text)})
    browser.cookies.clear()
    assert world.client.get("/api/auth/me", headers={"authorization": f"Bearer {secret}"}).status_code == 401


def test_password_change_errors_then_success(browser, world: World):
    log_in(browser, world.bob)
    token = csrf_of(browser.get("/account").text)
    wrong = browser.post(
        "/account/password",
        data={"current": "x", "new": "abcdefgh1", "confirm": "abcdefgh1", "csrf_token": token},
    )
    assert wrong.status_code == 400 and "The current password is wrong." in wrong.text
    mismatch = browser.post(
        "/account/password",
        data={"current": world.bob.password, "new": "abcdefgh1", "confirm": "abcdefgh2", "csrf_token": token},
    )
    assert mismatch.status_code == 400 and "The two new passwords differ." in mismatch.text
    done = browser.post(
        "/account/password",
        data={
            "current": world.bob.password,
            "new": "a-much-longer-pass",
            "confirm": "a-much-longer-pass",
            "csrf_token": token,
        },
    )
    assert done.status_code == 200 and "Your password was changed." in done.text


def test_language_follows_the_browser_then_the_users_choice(browser, world: World):
    chinese = browser.get("/login", headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"})
    assert "<h1>登录</h1>" in chinese.text and 'lang="zh-CN"' in chinese.text
    assert "<h1>Log in</h1>" in browser.get("/login", headers={"accept-language": "de,en;q=0.5"}).text
    log_in(browser, world.alice)
    switched = browser.get("/lang/zh?next=/account", follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == "/account"
    with world.session() as session:
        assert session.scalar(select(User.language).where(User.username == "alice")) == "zh"
    browser.cookies.delete("ag_lang")
    assert "我的账户" in browser.get("/account", headers={"accept-language": "en"}).text


def test_unknown_pages_and_api_paths_answer_in_their_own_format(browser):
    page = browser.get("/no/such/page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    api = browser.get("/api/no/such/thing")
    assert api.status_code == 404 and api.headers["content-type"] == "application/json"


def test_static_assets_are_served_locally_with_versioned_urls(browser):
    html = browser.get("/login").text
    for asset in re.findall(r'(?:href|src)="(/static/[^"]+)"', html):
        assert browser.get(asset).status_code == 200, asset
    assert "//unpkg" not in html and "cdn" not in html.lower()


def test_both_catalogs_have_the_same_keys_and_every_template_key_exists():
    catalogs = {language: catalog(language) for language in ("en", "zh")}
    assert sorted(path.name for path in Path(CATALOG_DIR).iterdir() if path.is_dir()) == ["en", "zh"]
    for area in Path(CATALOG_DIR, "en").glob("*.json"):
        chinese = Path(CATALOG_DIR, "zh", area.name)
        english_keys = set(json.loads(area.read_text(encoding="utf-8")))
        assert english_keys == set(json.loads(chinese.read_text(encoding="utf-8"))), area.name
    assert set(catalogs["en"]) == set(catalogs["zh"])
    used = set()
    for template in Path(TEMPLATE_DIR).rglob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_.]+)["']""", template.read_text(encoding="utf-8")))
    missing = sorted(key for key in used if key not in catalogs["en"])
    assert missing == []
