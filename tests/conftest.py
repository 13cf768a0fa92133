"""Shared fixtures: an isolated configuration per test, databases (SQLite and the machine's PostgreSQL),
the migrated and bootstrapped app, and accounts with tokens."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from server import db, migrate, queue
from server.settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379"


def clear_caches() -> None:
    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose()
    for cached in (get_settings, db.get_engine, db.get_session_factory, queue.get_celery):
        cached.cache_clear()


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except Exception:
        return False


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (scripts/ensure-services.sh starts it)")
    import psycopg

    name = f"ag_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    clear_caches()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    if not redis_available():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379 (scripts/ensure-services.sh starts it)")
    # A database number of our own so a test never sees another run's messages.
    return f"{REDIS_URL}/{uuid.uuid4().int % 8 + 8}"


def sandbox_scratch() -> Path:
    """A scratch root the sandbox uid can traverse: pytest's own tmp dirs are private to root (mode 700)."""
    return Path(tempfile.mkdtemp(prefix="ag-scratch-", dir="/tmp"))


@pytest.fixture
def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Point every setting at this test's own directory; keyword arguments become environment variables."""
    scratch = sandbox_scratch()

    def apply(**env: str) -> Settings:
        monkeypatch.setenv("AUTOGRADER_ENV", "test")
        monkeypatch.setenv("AUTOGRADER_DATA_DIR", str(tmp_path / "var"))
        monkeypatch.setenv("AUTOGRADER_SANDBOX__SCRATCH_DIR", str(scratch))
        monkeypatch.setenv("AUTOGRADER_BROKER__SWEEP_INTERVAL_SECONDS", "0")
        for key, value in env.items():
            monkeypatch.setenv(f"AUTOGRADER_{key.upper()}", value)
        clear_caches()
        return get_settings()

    yield apply
    clear_caches()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def settings(configure: Callable[..., Settings]) -> Settings:
    return configure()


@dataclass
class Account:
    username: str
    password: str
    token: str
    user_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@dataclass
class World:
    """A migrated database with the course, the warm-up assignment and accounts of every role."""

    settings: Settings
    client: TestClient
    course: str
    instructor: Account
    ta: Account
    alice: Account
    bob: Account
    outsider: Account

    def session(self) -> Session:
        return db.get_session_factory()()

    def account(self, username: str, role: str | None, *, admin: bool = False) -> Account:
        from server.auth import service as auth_service
        from server.courses import service as courses
        from server.courses.models import Role

        password = f"pw-{username}-{uuid.uuid4().hex[:8]}"
        with self.session() as session:
            user = auth_service.create_user(
                session=session, username=username, password=password, is_admin=admin
            )
            if role is not None:
                course = courses.get_course(session=session, slug=self.course)
                courses.enroll(session=session, course=course, user=user, role=Role(role))
            token, _ = auth_service.create_api_token(
                session=session, user=user, name="tests", expires_in_days=None
            )
            session.commit()
            return Account(username, password, token, user.id)


def build_world(settings: Settings) -> World:
    from server.bootstrap import bootstrap
    from server.main import create_app

    migrate.upgrade()
    with db.get_session_factory()() as session:
        bootstrap(
            session=session,
            settings=settings,
            packages=[REPO / "graders" / "warmup", REPO / "graders" / "project"],
        )
    client = TestClient(create_app(settings, run_sweeper=False))
    world = World(settings, client, settings.course_slug, *([None] * 5))  # type: ignore[arg-type]
    world.instructor = world.account("prof", "instructor")
    world.ta = world.account("tina", "ta")
    world.alice = world.account("alice", "student")
    world.bob = world.account("bob", "student")
    world.outsider = world.account("mallory", None)
    return world


@pytest.fixture(scope="session")
def world_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Account]]:
    """Migrate, bootstrap and create the accounts once; each test gets a copy of the database file."""
    patch = pytest.MonkeyPatch()
    patch.setenv("AUTOGRADER_ENV", "test")
    patch.setenv("AUTOGRADER_DATA_DIR", str(tmp_path_factory.mktemp("world-template") / "var"))
    clear_caches()
    try:
        built = build_world(get_settings())
        accounts = {name: getattr(built, name) for name in ("instructor", "ta", "alice", "bob", "outsider")}
        database = built.settings.data_path / "autograder.db"
        db.get_engine().dispose()  # checkpoints the WAL into the main file
    finally:
        patch.undo()
        clear_caches()
    return database, accounts


@pytest.fixture
def world(settings: Settings, world_template: tuple[Path, dict[str, Account]]) -> Iterator[World]:
    from server.main import create_app

    database, accounts = world_template
    settings.data_path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(database, settings.data_path / "autograder.db")
    built = World(
        settings, TestClient(create_app(settings, run_sweeper=False)), settings.course_slug, **accounts
    )
    with built.client:
        yield built


@pytest.fixture
def solution_bytes() -> bytes:
    return (REPO / "graders" / "warmup" / "solution" / "warmup.py").read_bytes()
