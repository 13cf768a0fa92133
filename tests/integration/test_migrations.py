"""Alembic is the only way the schema changes: from empty to head and back, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from server import migrate, models
from server.db import make_engine

EXPECTED_TABLES = {
    "users",
    "browser_sessions",
    "api_tokens",
    "courses",
    "enrollments",
    "grader_bundles",
    "assignments",
    "blobs",
    "submissions",
    "grading_runs",
    "audit_events",
    "rubric_scores",
    "extensions",
    "rate_buckets",
    "similarity_reports",
    "score_overrides",
    "alembic_version",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("pg_database"))


def test_upgrade_from_empty_matches_the_models(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = make_engine(database_url, pooled=False)
    try:
        assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), models.Base.metadata)
        assert differences == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.downgrade(database_url, "base")
    engine = make_engine(database_url, pooled=False)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(database_url)
        assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES
    finally:
        engine.dispose()
