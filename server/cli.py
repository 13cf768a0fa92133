"""``autograder``: run the service, administer it, and submit work from a terminal."""

from __future__ import annotations

import getpass
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from server.client import Client, ClientConfig, ClientError

app = typer.Typer(help="LLM course autograder.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
user_app = typer.Typer(help="Accounts.", no_args_is_help=True)
roster_app = typer.Typer(help="Course roster.", no_args_is_help=True)
assignment_app = typer.Typer(help="Assignment packages.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(roster_app, name="roster")
app.add_typer(assignment_app, name="assignment")
app.add_typer(token_app, name="token")

CourseOption = Annotated[str | None, typer.Option(help="Course slug (default: the configured course).")]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- running the service -------------------------------------------------------------------------------


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Migrate, publish the course's assignments, then run server and worker until interrupted."""
    from server import migrate
    from server.bootstrap import FIRST_INSTRUCTOR, bootstrap
    from server.db import session_scope
    from server.settings import get_settings

    settings = get_settings()
    migrate.upgrade()
    with session_scope() as session:
        result = bootstrap(session=session, settings=settings)
    host = host or settings.host
    port = port or settings.port
    url = f"http://{host}:{port}"
    typer.echo(f"Course {result.course.slug!r}: published {', '.join(a.slug for a in result.assignments)}")
    if result.instructor_password:
        credentials = settings.data_path / "initial-instructor.txt"
        fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"username: {FIRST_INSTRUCTOR}\npassword: {result.instructor_password}\n")
        typer.secho(
            f"\nFirst start: created the instructor account\n"
            f"    username: {FIRST_INSTRUCTOR}\n    password: {result.instructor_password}\n"
            f"(also saved, readable by you only, in {credentials})\n",
            fg=typer.colors.GREEN,
        )
    else:
        typer.echo(f"Log in with an existing account (first instructor: {FIRST_INSTRUCTOR}).")
    typer.echo(
        f"Open {url} in a browser and log in. API and its documentation: {url}/docs\n"
        f"From a terminal: autograder login --server {url}   then   autograder submit warmup warmup.py\n"
    )
    python = sys.executable
    children = [
        subprocess.Popen([python, "-m", "server.cli", "serve", "--host", host, "--port", str(port)]),
        subprocess.Popen([python, "-m", "server.cli", "worker"]),
    ]
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for child in children:
            if child.poll() is not None:
                typer.secho(f"A service exited with status {child.returncode}; stopping.", err=True)
                exit_code = child.returncode or 1
                stopping = True
        time.sleep(0.5)
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    raise typer.Exit(exit_code)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
) -> None:
    """Run the web server."""
    import uvicorn

    from server.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        "server.main:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        proxy_headers=True,
    )


@app.command()
def worker(
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues (cpu, gpu).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Gradings at a time.")] = None,
) -> None:
    """Run a grading worker."""
    _logging()
    from server.settings import get_settings
    from worker.celery_app import run_worker

    settings = get_settings()
    run_worker(
        queues=queues or settings.worker.queues, concurrency=concurrency or settings.worker.concurrency
    )


@app.command()
def sweep() -> None:
    """Re-send lost or stuck submissions once (the server also does this periodically)."""
    _logging()
    from server.db import session_scope
    from server.settings import get_settings
    from server.submissions.sweeper import sweep as run_sweep

    settings = get_settings()
    with session_scope() as session:
        report = run_sweep(
            session=session,
            requeue_after_seconds=settings.broker.requeue_after_seconds,
            max_attempts=settings.worker.max_attempts,
        )
    typer.echo(f"re-sent {report.resent}, reclaimed {report.reclaimed}, gave up on {report.gave_up}")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations."""
    from server import migrate

    migrate.upgrade(revision=revision)
    typer.echo(f"database at {revision}")


# --- administration (direct database access) ------------------------------------------------------------


def _course(session: Any, slug: str | None) -> Any:
    from server.courses import service as courses
    from server.settings import get_settings

    settings = get_settings()
    slug = slug or settings.course_slug
    if slug == settings.course_slug:
        return courses.ensure_course(
            session=session, slug=slug, title=settings.course_title, timezone=settings.course_timezone
        )
    return courses.get_course(session=session, slug=slug)


@user_app.command("add")
def user_add(
    username: str,
    role: Annotated[str, typer.Option(help="student, ta or instructor.")] = "student",
    course: CourseOption = None,
    admin: Annotated[bool, typer.Option(help="Site administrator.")] = False,
    password: Annotated[
        str | None,
        typer.Option(help="Password (default: generate one and print it).", envvar="AUTOGRADER_NEW_PASSWORD"),
    ] = None,
    display_name: Annotated[str, typer.Option(help="Name shown to staff.")] = "",
) -> None:
    """Create an account and enroll it in a course."""
    from server.auth import security
    from server.auth import service as auth_service
    from server.courses import service as courses
    from server.courses.models import Role
    from server.db import session_scope
    from server.errors import DomainError

    if role not in Role.__members__:
        raise fail("--role must be student, ta or instructor.")
    generated = password is None
    password = password or security.new_password()
    with session_scope() as session:
        try:
            user = auth_service.create_user(
                session=session,
                username=username,
                password=password,
                display_name=display_name,
                is_admin=admin,
            )
            courses.enroll(session=session, course=_course(session, course), user=user, role=Role(role))
        except DomainError as exc:
            raise fail(exc.message) from exc
        session.commit()
    typer.echo(f"created {username} ({role})" + (f" with password {password}" if generated else ""))


@roster_app.command("import")
def roster_import(csv_file: Path, course: CourseOption = None) -> None:
    """Create or update accounts and enrollments from a CSV (username, display_name, email, role, password)."""
    from server.courses import service as courses
    from server.db import session_scope
    from server.errors import DomainError

    try:
        text = csv_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"Cannot read {csv_file}: {exc}") from exc
    with session_scope() as session:
        try:
            result = courses.import_roster(session=session, course=_course(session, course), csv_text=text)
        except DomainError as exc:
            raise fail(exc.message) from exc
        session.commit()
    typer.echo(f"created {len(result.created)}, updated {len(result.updated)}")
    if result.generated_passwords:
        typer.echo("Generated passwords (shown once):")
        for username, password in result.generated_passwords.items():
            typer.echo(f"{username},{password}")


@roster_app.command("export")
def roster_export(course: CourseOption = None) -> None:
    """Print the roster as CSV."""
    from server.courses import service as courses
    from server.db import session_scope

    with session_scope() as session:
        typer.echo(courses.export_roster(session=session, course=_course(session, course)), nl=False)


@assignment_app.command("publish")
def assignment_publish(
    directory: Path,
    course: CourseOption = None,
    unpublished: Annotated[bool, typer.Option(help="Store it without showing it to students.")] = False,
) -> None:
    """Publish (or update) an assignment package directory."""
    from server.assignments import service as assignments
    from server.db import session_scope
    from server.errors import DomainError

    with session_scope() as session:
        try:
            assignment = assignments.publish_package(
                session=session,
                course=_course(session, course),
                path=directory,
                actor=None,
                published=not unpublished,
            )
        except DomainError as exc:
            raise fail(exc.message) from exc
        session.commit()
        typer.echo(
            f"{assignment.slug}: version {assignment.bundle.version}, bundle {assignment.bundle.sha256[:12]}, "
            f"{'unpublished' if unpublished else 'published'}"
        )


@token_app.command("create")
def token_create(
    user: Annotated[
        str, typer.Option("--user", help="Whose token (administrators only: runs on the server).")
    ],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
    days: Annotated[int | None, typer.Option(help="Expire after this many days.")] = None,
) -> None:
    """Create an API token for an account and print it (shown once)."""
    from sqlalchemy import select

    from server.auth import service as auth_service
    from server.auth.models import User
    from server.db import session_scope
    from server.errors import DomainError

    with session_scope() as session:
        account = session.scalar(select(User).where(User.username == user))
        if account is None:
            raise fail(f"There is no user {user!r}.")
        try:
            secret, _ = auth_service.create_api_token(
                session=session, user=account, name=name, expires_in_days=days
            )
        except DomainError as exc:
            raise fail(exc.message) from exc
        session.commit()
    typer.echo(secret)


# --- student commands (over HTTP) ----------------------------------------------------------------------


def _client() -> Client:
    config = ClientConfig.load()
    if not config.token:
        raise fail("Not logged in: run 'autograder login --server URL' first (or set AUTOGRADER_TOKEN).")
    return Client(config)


@app.command()
def login(
    server: Annotated[str, typer.Option(help="Server URL.")] = "http://127.0.0.1:8000",
    username: Annotated[str | None, typer.Option(help="Your username.")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input.")] = False,
    course: CourseOption = None,
) -> None:
    """Log in and store an API token in your config directory (readable by you only)."""
    username = username or typer.prompt("Username")
    password = sys.stdin.readline().rstrip("\n") if password_stdin else getpass.getpass("Password: ")
    config = ClientConfig(server=server, course=course)
    try:
        config.token = Client(config).login(username, password, token_name=f"cli@{os.uname().nodename}")
    except ClientError as exc:
        raise fail(str(exc)) from exc
    path = config.save()
    typer.echo(f"Logged in as {username}; token saved in {path}")


def _print_result(detail: dict[str, Any]) -> None:
    status = detail["status"]
    color = {"graded": typer.colors.GREEN, "failed": typer.colors.RED, "error": typer.colors.RED}.get(status)
    score = f" {detail['score']:g}/{detail['max_score']:g}" if detail.get("score") is not None else ""
    typer.secho(f"Submission {detail['id']}: {status}{score}", fg=color, bold=True)
    if detail.get("status_message"):
        typer.echo(f"  {detail['status_message']}")
    if detail.get("failure_detail"):
        typer.echo("  " + detail["failure_detail"].rstrip().replace("\n", "\n  "))
    for test in detail.get("tests", []):
        mark = "PASS" if test["passed"] else "FAIL"
        line = f"  [{mark}] {test['name']} ({test['score']:g}/{test['max_score']:g})"
        if not test["passed"] and test.get("message"):
            line += f": {test['message']}"
        typer.echo(line)
    hidden = detail.get("hidden") or {}
    if hidden.get("count"):
        typer.echo(
            f"  hidden tests: {hidden['passed']}/{hidden['count']} passed "
            f"({hidden['score']:g}/{hidden['max_score']:g} points)"
        )
    for metric, value in (detail.get("metrics") or {}).items():
        typer.echo(f"  {metric}: {value:.4g}")
    for note in detail.get("notes") or []:
        typer.echo(f"  note: {note}")


@app.command()
def submit(
    assignment: str,
    paths: Annotated[
        list[Path],
        typer.Argument(help="Files, directories (a package keeps its layout), or one .zip / .tar.gz."),
    ],
    course: CourseOption = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the upload is accepted.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 900.0,
) -> None:
    """Submit files for grading and (unless --no-wait) follow the grading live."""
    client = _client()
    try:
        course = course or client.default_course()
        created = client.submit(course, assignment, paths)
        typer.echo(f"Submission {created['id']} accepted: {', '.join(created['files'])}")
        if no_wait:
            return
        last = ""
        for snapshot in client.follow(created["id"], timeout=timeout):
            line = snapshot["status"]
            if snapshot.get("queue_position"):
                line += f" (position {snapshot['queue_position']} in the queue)"
            progress = snapshot.get("progress") or {}
            if snapshot["status"] == "running" and progress.get("total"):
                line += f" test {progress['done']}/{progress['total']}"
                if progress.get("current_test"):
                    line += f" {progress['current_test']}"
            if line != last:
                typer.echo(f"  {line}")
                last = line
        detail = client.submission(created["id"])
    except ClientError as exc:
        raise fail(str(exc)) from exc
    _print_result(detail)
    if detail["status"] != "graded":
        raise typer.Exit(2)


@app.command()
def status(submission_id: int) -> None:
    """Show a submission's status and results."""
    try:
        detail = _client().submission(submission_id)
    except ClientError as exc:
        raise fail(str(exc)) from exc
    if detail["status"] == "queued" and detail.get("queue_position"):
        typer.echo(f"Submission {submission_id}: queued, position {detail['queue_position']}")
        return
    _print_result(detail)


@app.command()
def leaderboard(assignment: str, course: CourseOption = None) -> None:
    """Show an assignment's leaderboard."""
    client = _client()
    try:
        board = client.leaderboard(course or client.default_course(), assignment)
    except ClientError as exc:
        raise fail(str(exc)) from exc
    label = board.get("label") or board.get("metric") or "metric"
    unit = board.get("unit") or ""
    typer.echo(f"{'rank':>4}  {'name':<20} {'score':>9}  {label} ({unit})")
    for entry in board["entries"]:
        metric = f"{entry['metric']:.4g}" if entry["metric"] is not None else "-"
        mark = " <- you" if entry["is_you"] else ""
        typer.echo(
            f"{entry['rank']:>4}  {entry['name']:<20} {entry['score']:>4g}/{entry['max_score']:<4g}  {metric}{mark}"
        )


if __name__ == "__main__":
    app()
