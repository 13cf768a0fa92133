"""Configuration from environment variables (prefix ``AUTOGRADER_``, nested groups joined by ``__``).

Everything has an embedded default so that ``make run`` works on a fresh machine: SQLite under ``./var``,
a broker that needs no server (kombu's SQLAlchemy transport on a SQLite file) and the local bubblewrap
sandbox. Outside dev mode a secret left at its default is refused at start-up.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "dev-insecure-change-me"  # noqa: S105 - the sentinel refused outside dev mode


class DatabaseSettings(BaseModel):
    # Empty means "SQLite file in the data dir"; production sets postgresql+psycopg://...
    url: str = ""
    echo: bool = False


class BrokerSettings(BaseModel):
    # Empty means the embedded broker: kombu's SQLAlchemy transport on a SQLite file in the data dir.
    url: str = ""
    # How long a submission may sit in 'queued' before the sweeper sends its task again. Duplicates are
    # harmless (the claim is atomic), so this only bounds how long a message lost by the broker delays grading.
    requeue_after_seconds: float = 300.0
    sweep_interval_seconds: float = 30.0


class SandboxSettings(BaseModel):
    backend: Literal["local", "docker"] = "local"
    uid: int = 65534
    gid: int = 65534
    # Where each grading gets its fresh job directory. Every parent must be traversable by ``uid``
    # (not readable); empty means ``<data_dir>/scratch``. With the docker backend the daemon must see it
    # at the same path.
    scratch_dir: Path | None = None
    # The docker backend: the sandbox image (docker/sandbox.Dockerfile), an optional OCI runtime ("runsc"
    # for gVisor), the daemon (default: DOCKER_HOST or the local socket), CPUs per grading, and the GPU
    # this worker pins each grading to.
    image: str = "autograder-sandbox:cpu"
    runtime: str | None = None
    docker_host: str | None = None
    cpus: float = 1.0
    gpu_vendor: Literal["nvidia", "amd"] | None = None
    gpu_index: int = 0


class WorkerSettings(BaseModel):
    concurrency: int = 1
    # Both by default, so one machine grades every assignment (tests that need a GPU say so where there is
    # none); production runs one worker per resource class (docker-compose.yml).
    queues: str = "cpu,gpu"
    # A running grading renews its lease every third of this; a worker that dies stops renewing and the
    # sweeper hands the submission to another worker once the lease has expired.
    lease_seconds: float = 60.0
    max_attempts: int = 3
    # A task wakes a worker, which then claims the fairest queued submission of its queue (students before
    # staff regrades before re-measurements, then the student served least recently) rather than the one the
    # message names. False: grade what the message names, first come first served (for comparison).
    fair_order: bool = True


class UploadSettings(BaseModel):
    # Server-wide ceilings; each assignment may set lower ones in its package.
    max_request_bytes: int = 16 * 2**20
    max_files: int = 64


class AuthSettings(BaseModel):
    session_hours: float = 12.0
    token_days_default: int = 90
    cookie_secure: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AUTOGRADER_", env_nested_delimiter="__", extra="ignore", env_file=None
    )

    env: Literal["dev", "test", "production"] = "dev"
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8000
    course_slug: str = "llm-basics"
    course_title: str = "LLM basics, from zero to one"
    course_timezone: str = "Asia/Shanghai"
    log_bytes: int = 64 * 2**10
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    uploads: UploadSettings = Field(default_factory=UploadSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.env == "production" and self.secret_key.get_secret_value() == DEFAULT_SECRET_KEY:
            raise ValueError(
                "AUTOGRADER_SECRET_KEY is still the development default; set a long random value "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if self.env == "production" and len(self.secret_key.get_secret_value()) < 32:
            raise ValueError("AUTOGRADER_SECRET_KEY must be at least 32 characters in production")
        return self

    @property
    def data_path(self) -> Path:
        return self.data_dir.resolve()

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_path / 'autograder.db'}"

    @property
    def broker_url(self) -> str:
        return self.broker.url or f"sqla+sqlite:///{self.data_path / 'broker.db'}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker.url

    @property
    def scratch_path(self) -> Path:
        return self.sandbox.scratch_dir.resolve() if self.sandbox.scratch_dir else self.data_path / "scratch"

    @property
    def bundle_cache_path(self) -> Path:
        return self.data_path / "bundles"


@lru_cache
def get_settings() -> Settings:
    return Settings()
