"""Logging in and out, errors that keep what was typed, the language switch, in a real browser."""

from __future__ import annotations

import re

from tests.browser.conftest import STUDENT, log_in, shoot


def test_a_wrong_password_keeps_the_username_and_says_why(page):
    page.goto("/login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not-her-password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong username or password."
    assert page.get_by_label("Username").input_value() == "alice"
    assert page.get_by_label("Password").input_value() == ""
    shoot(page, "login-error-desktop")


def test_the_language_switch_changes_the_page_text(page):
    log_in(page, STUDENT)
    page.goto("/account")
    assert page.get_by_role("heading", level=1).inner_text() == "Your account"
    page.get_by_role("link", name="中文").click()
    page.wait_for_url(re.compile(r"/account$"))
    assert page.get_by_role("heading", level=1).inner_text() == "我的账户"
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    page.get_by_role("link", name="English").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Your account"


def test_the_login_page_follows_the_browsers_language_on_a_phone(phone):
    phone.goto("/login")
    assert phone.get_by_role("heading", level=1).inner_text() == "登录"
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling on a phone
    shoot(phone, "login-phone-zh", docs=True)


def test_logging_out_ends_the_session(page):
    log_in(page, STUDENT)
    page.goto("/account")
    page.get_by_role("button", name=re.compile("Log out")).click()
    page.wait_for_url(re.compile(r"/login$"))
    page.goto("/account")
    page.wait_for_url(re.compile(r"/login\?next=/account$"))
