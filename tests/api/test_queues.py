"""Tasks go to the queue the assignment asks for, with time limits, only after the row is committed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from unittest import mock

from server.assignments import service as assignments
from server.courses import service as courses
from server.submissions.models import Submission
from tests.api.helpers import submit
from tests.conftest import REPO, World


def publish_gpu_copy(world: World, tmp_path: Path) -> None:
    package = tmp_path / "warmup-gpu"
    shutil.copytree(REPO / "graders" / "warmup", package, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = package / "assignment.toml"
    text = manifest.read_text()
    text = re.sub(r'(?m)^slug = "warmup"$', 'slug = "warmup-gpu"', text)
    manifest.write_text(re.sub(r'(?m)^queue = "cpu"$', 'queue = "gpu"', text))
    with world.session() as session:
        course = courses.get_course(session=session, slug=world.course)
        assignments.publish_package(session=session, course=course, path=package, actor=None)
        session.commit()


def test_each_assignment_sends_to_its_own_queue(world: World, solution_bytes: bytes, tmp_path: Path) -> None:
    publish_gpu_copy(world, tmp_path)
    seen: list[tuple[int, str, float]] = []

    def send_task(name: str, *, args: list[int], queue: str, soft_time_limit: float, **_: object) -> None:
        with world.session() as session:
            # The row is committed before the task is sent: a worker can always read it.
            assert session.get(Submission, args[0]) is not None
        seen.append((args[0], queue, soft_time_limit))

    fake = mock.Mock()
    fake.send_task.side_effect = send_task
    with mock.patch("server.queue.get_celery", return_value=fake):
        cpu = submit(world, world.alice, solution_bytes).json()
        gpu = submit(world, world.alice, solution_bytes, slug="warmup-gpu").json()
    assert [(s[0], s[1]) for s in seen] == [(cpu["id"], "cpu"), (gpu["id"], "gpu")]
    assert all(limit > 120 for _, _, limit in seen)  # the package's 120 s plus the grader's margin


def test_a_broker_outage_keeps_the_submission_queued_for_the_sweeper(
    world: World, solution_bytes: bytes
) -> None:
    broken = mock.Mock()
    broken.send_task.side_effect = ConnectionError("broker down")
    with mock.patch("server.queue.get_celery", return_value=broken):
        response = submit(world, world.alice, solution_bytes)
    assert response.status_code == 201
    assert response.json()["status"] == "queued"
