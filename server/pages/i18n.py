"""Page text in Chinese and English: JSON catalogs per language in frontend/i18n/<language>/, chosen per user.

The language is the user's saved choice, else the ``ag_lang`` cookie (set by the language switch before login),
else the browser's Accept-Language, else English. Templates call ``t("key", name=value)``; a key missing from a
catalog falls back to English, and a test keeps both catalogs' keys identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

from fastapi import Request

from server.auth.models import User

CATALOG_DIR = Path(__file__).resolve().parents[2] / "frontend" / "i18n"
LANGUAGES = {"en": "English", "zh": "中文"}
DEFAULT_LANGUAGE = "en"
LANGUAGE_COOKIE = "ag_lang"

Translate = Callable[..., str]


@cache
def catalog(language: str) -> dict[str, str]:
    """Every ``frontend/i18n/<language>/*.json`` file merged (one file per area of the site)."""
    merged: dict[str, str] = {}
    for path in sorted((CATALOG_DIR / language).glob("*.json")):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{path} must map keys to strings")
        clash = sorted(set(data) & set(merged))
        if clash:
            raise ValueError(f"{path}: key {clash[0]!r} is already defined in another catalog file")
        merged.update(data)
    return merged


def _from_accept_language(header: str) -> str | None:
    """The best supported language in an Accept-Language header (weights honoured), if any."""
    choices: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and weight > 0:
            choices.append((-weight, index, primary))
    return min(choices)[2] if choices else None


def negotiate(request: Request, user: User | None) -> str:
    if user is not None and user.language in LANGUAGES:
        return str(user.language)
    cookie = request.cookies.get(LANGUAGE_COOKIE)
    if cookie in LANGUAGES:
        return str(cookie)
    return _from_accept_language(request.headers.get("accept-language", "")) or DEFAULT_LANGUAGE


def translator(language: str) -> Translate:
    texts = catalog(language)
    fallback = catalog(DEFAULT_LANGUAGE)

    def translate(key: str, **values: object) -> str:
        text = texts.get(key) or fallback.get(key) or key
        return text.format(**values) if values else text

    return translate
