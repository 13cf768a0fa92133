"""docker-compose.yml and the Dockerfiles: the stack's shape, its settings, its secrets, the sandbox image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"postgres", "redis", "server", "worker-cpu", "worker-gpu", "flower"}
WORKERS = ("worker-cpu", "worker-gpu")
PROJECT_DIRECTORIES = ("server", "worker", "graders", "reference_impl")
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?P<rest>[^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "write environments as mappings"
    return {str(key): str(value) for key, value in env.items()}


def setting_variables(model: type[BaseModel] = Settings, prefix: str = "AUTOGRADER_") -> set[str]:
    """Every environment variable the settings read: AUTOGRADER_<FIELD>, nested groups joined by __."""
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= setting_variables(annotation, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def autograder_variables(compose: dict[str, Any]) -> set[str]:
    return {
        name
        for service in compose["services"].values()
        for name in environment(service)
        if name.startswith("AUTOGRADER_")
    }


def substituted(value: str) -> str:
    """`value` as compose would pass it, with a long dummy for every ${VARIABLE}."""
    return _VARIABLE.sub("x" * 48, value)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(text.split(maxsplit=1)[0].upper(), text.partition(" ")[2]) for text in logical]


def final_user(dockerfile: Path) -> str | None:
    users = [arguments for instruction, arguments in instructions(dockerfile) if instruction == "USER"]
    return users[-1] if users else None


def test_the_stack_has_its_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_long_running_service_has_a_health_check(compose: dict[str, Any], name: str) -> None:
    healthcheck = compose["services"][name].get("healthcheck") or {}
    assert healthcheck.get("test"), f"{name} has no health check"


def test_server_migrates_then_serves_and_checks_api_health(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    command = " ".join(server["command"])
    assert command.index("db upgrade") < command.index("serve")
    assert "/api/health" in " ".join(server["healthcheck"]["test"])
    assert {"postgres", "redis"} <= set(server["depends_on"])


def test_workers_wait_for_a_migrated_server(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        assert compose["services"][name]["depends_on"]["server"]["condition"] == "service_healthy"


def test_workers_use_the_docker_sandbox_with_a_same_path_scratch_dir(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        worker = compose["services"][name]
        env = environment(worker)
        assert env["AUTOGRADER_SANDBOX__BACKEND"] == "docker"
        scratch = env["AUTOGRADER_SANDBOX__SCRATCH_DIR"]
        # The daemon resolves bind sources on the host: the worker must see the scratch dir at the host's path.
        assert f"{scratch}:{scratch}" in worker["volumes"]
        assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]


def test_gpu_worker_reserves_one_nvidia_gpu_and_pins_the_sandbox_to_it(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker-gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    env = environment(worker)
    assert env["AUTOGRADER_SANDBOX__GPU_VENDOR"] == "nvidia"
    assert device["device_ids"] == [env["AUTOGRADER_SANDBOX__GPU_INDEX"]]
    command = worker["command"]
    assert command[command.index("--queues") + 1] == "gpu"
    assert command[command.index("--concurrency") + 1] == "1"


def test_every_autograder_variable_is_a_setting(compose: dict[str, Any]) -> None:
    unknown = autograder_variables(compose) - setting_variables()
    assert unknown == set(), f"not in server.settings.Settings: {sorted(unknown)}"


@pytest.mark.parametrize("name", ["server", *WORKERS])
def test_each_service_environment_is_valid_production_settings(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in environment(compose["services"][name]).items():
        monkeypatch.setenv(key, substituted(value))
    settings = Settings()
    assert settings.env == "production"
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("redis://")


def test_secrets_have_no_defaults(compose: dict[str, Any]) -> None:
    secrets = {"AUTOGRADER_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH"}
    seen = set()
    for service in compose["services"].values():
        for value in environment(service).values():
            for match in _VARIABLE.finditer(value):
                if match["name"] in secrets:
                    seen.add(match["name"])
                    # ${NAME:?message} or ${NAME?message} fail without it; ${NAME:-x} or ${NAME-x} would default.
                    assert match["rest"].startswith((":?", "?")), match.group(0)
    assert seen == secrets
    key = environment(compose["services"]["server"])["AUTOGRADER_SECRET_KEY"]
    assert _VARIABLE.fullmatch(key), "the secret key comes from the environment only"


def test_server_and_flower_listen_on_loopback_only(compose: dict[str, Any]) -> None:
    for name in ("server", "flower"):
        assert all(port.startswith("127.0.0.1:") for port in compose["services"][name]["ports"])
    for name in ("postgres", "redis"):
        assert "ports" not in compose["services"][name]


def test_built_images_come_from_the_dockerfiles(compose: dict[str, Any]) -> None:
    dockerfiles = {
        service["build"]["dockerfile"] for service in compose["services"].values() if "build" in service
    }
    assert dockerfiles == {"docker/Dockerfile", "docker/sandbox.Dockerfile"}
    assert all((REPO / dockerfile).is_file() for dockerfile in dockerfiles)


def test_sandbox_image_contains_nothing_of_the_autograder() -> None:
    steps = instructions(REPO / "docker" / "sandbox.Dockerfile")
    copied = [arguments for instruction, arguments in steps if instruction in {"COPY", "ADD"}]
    assert not any(
        re.search(r"\b(reference_impl|graders|tests|server|worker)\b", arguments) for arguments in copied
    ), copied
    assert copied == [], "the sandbox image takes nothing from the repository"
    runs = " ".join(arguments for instruction, arguments in steps if instruction == "RUN")
    assert not re.search(r"pip install[^&]*(\s\.(\s|$)|-e\s)", runs), "the project must not be installed"


def test_server_image_copies_the_project_the_server_reads() -> None:
    copied = " ".join(
        arguments
        for instruction, arguments in instructions(REPO / "docker" / "Dockerfile")
        if instruction == "COPY"
    )
    needed = [name for name in (*PROJECT_DIRECTORIES, "frontend") if any((REPO / name).glob("**/*.*"))]
    missing = [name for name in needed if not re.search(rf"(^|\s){name}(\s|/|$)", copied)]
    assert missing == [], f"docker/Dockerfile does not COPY {missing}"


def test_sandbox_image_runs_as_nobody() -> None:
    assert final_user(REPO / "docker" / "sandbox.Dockerfile") == "65534:65534"


def test_server_image_runs_as_an_unprivileged_user() -> None:
    assert final_user(REPO / "docker" / "Dockerfile") not in {None, "root", "0", "0:0"}
