"""Settings: embedded defaults, environment overrides, and refusing default secrets in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.settings import Settings


def test_defaults_need_no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("AUTOGRADER_DATABASE__URL", raising=False)
    monkeypatch.delenv("AUTOGRADER_BROKER__URL", raising=False)
    settings = Settings(data_dir="var")  # type: ignore[arg-type]
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith(
        "var/autograder.db"
    )
    assert settings.broker_url.startswith("sqla+sqlite:///") and settings.embedded_broker
    assert settings.sandbox.backend == "local"
    assert settings.scratch_path == settings.data_path / "scratch"


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGRADER_DATABASE__URL", "postgresql+psycopg://db/autograder")
    monkeypatch.setenv("AUTOGRADER_BROKER__URL", "redis://redis:6379/0")
    monkeypatch.setenv("AUTOGRADER_WORKER__LEASE_SECONDS", "12.5")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://db/autograder"
    assert settings.broker_url == "redis://redis:6379/0" and not settings.embedded_broker
    assert settings.worker.lease_seconds == 12.5


def test_production_refuses_the_default_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOGRADER_SECRET_KEY", raising=False)
    monkeypatch.setenv("AUTOGRADER_ENV", "production")
    with pytest.raises(ValidationError, match="AUTOGRADER_SECRET_KEY is still the development default"):
        Settings()
    monkeypatch.setenv("AUTOGRADER_SECRET_KEY", "too-short")
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings()
    monkeypatch.setenv("AUTOGRADER_SECRET_KEY", "x" * 48)
    assert Settings().env == "production"


def test_dev_mode_accepts_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOGRADER_SECRET_KEY", raising=False)
    monkeypatch.setenv("AUTOGRADER_ENV", "dev")
    assert Settings().env == "dev"
