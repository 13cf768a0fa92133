"""Page tests: a browser-like client (cookies, forms, CSRF tokens scraped from the page) on the test world."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Account, World

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def log_in(client: TestClient, account: Account, *, next_path: str = "") -> None:
    page = client.get("/login")
    response = client.post(
        "/login",
        data={
            "username": account.username,
            "password": account.password,
            "next": next_path,
            "csrf_token": csrf_of(page.text),
        },
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


@pytest.fixture
def browser(world: World) -> TestClient:
    """A client with no bearer token: it behaves like a browser (cookies only)."""
    world.client.cookies.clear()
    return world.client
