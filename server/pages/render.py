"""Rendering templates with what every page needs: the viewer, their language, the CSRF token, asset URLs."""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import markdown_it
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from server.auth.models import User
from server.pages import i18n

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"
TEMPLATE_DIR = FRONTEND_DIR / "templates"
STATIC_DIR = FRONTEND_DIR / "static"


@cache
def _asset_version(path: str) -> str:
    """A content hash for cache busting: /static/app.css?v=<hash> changes exactly when the file does."""
    try:
        return hashlib.sha256((STATIC_DIR / path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


def static_url(path: str) -> str:
    return f"/static/{path}?v={_asset_version(path)}"


# Task READMEs come from instructors' packages; raw HTML inside them is not rendered (escaped as text).
_markdown = markdown_it.MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str) -> Markup:
    return Markup(_markdown.render(text))  # noqa: S704 - html=False: markdown-it escapes any HTML in the source


def iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(static=static_url, languages=i18n.LANGUAGES, markdown=render_markdown)
    env.filters["iso"] = iso
    return env


def render(
    request: Request,
    template: str,
    *,
    user: User | None,
    status_code: int = 200,
    title: str = "",
    **context: Any,
) -> HTMLResponse:
    language = i18n.negotiate(request, user)
    page = (
        environment()
        .get_template(template)
        .render(
            request=request,
            user=user,
            lang=language,
            t=i18n.translator(language),
            csrf_token=getattr(request.state, "csrf_token", None)
            or request.cookies.get(PRE_SESSION_CSRF_COOKIE, ""),
            title=title,
            path=request.url.path,
            **context,
        )
    )
    response = HTMLResponse(page, status_code=status_code)
    response.headers["cache-control"] = "no-store"
    return response


PRE_SESSION_CSRF_COOKIE = "ag_csrf"
