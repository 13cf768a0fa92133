"""The Celery worker: the grading task registered on the server's Celery app.

Start it with ``autograder worker`` (which calls :func:`run_worker`).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from celery.exceptions import SoftTimeLimitExceeded

from server.db import get_session_factory
from server.queue import GRADE_TASK, get_celery
from server.settings import get_settings
from worker.grading import GradingContext, default_worker_id, grade_submission
from worker.sandbox import get_sandbox

log = logging.getLogger(__name__)

app = get_celery()


@lru_cache
def grading_context() -> GradingContext:
    settings = get_settings()
    sandbox = settings.sandbox
    options: dict[str, object] = {"uid": sandbox.uid, "gid": sandbox.gid}
    if sandbox.backend == "docker":
        options = {
            "image": sandbox.image,
            "base_url": sandbox.docker_host,
            "runtime": sandbox.runtime,
            "gpu_vendor": sandbox.gpu_vendor,
            "gpu_index": sandbox.gpu_index,
            "cpus": sandbox.cpus,
            "user": f"{sandbox.uid}:{sandbox.gid}",
            "scratch_dir": settings.scratch_path,
        }
    return GradingContext(
        settings=settings,
        session_factory=get_session_factory(),
        sandbox=get_sandbox(settings.sandbox.backend, **options),
        worker_id=default_worker_id(),
    )


@app.task(name=GRADE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def grade_submission_task(submission_id: int) -> str:
    try:
        return grade_submission(int(submission_id), grading_context())
    except SoftTimeLimitExceeded:
        # The sandbox's own wall clock should always fire first; reaching this means the grader itself hung.
        # The lease then expires and the sweeper hands the submission to another attempt.
        log.error("grading submission %s exceeded the task's soft time limit", submission_id)
        return "timeout"


def run_worker(*, queues: str, concurrency: int, loglevel: str = "INFO") -> None:
    # Idle OpenMP threads in the grader would otherwise spin and steal the CPU that timed student code needs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = get_settings()
    context = grading_context()
    context.sandbox.check()
    argv = [
        "worker",
        f"--queues={queues}",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        f"--hostname=autograder-{settings.env}@%h",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
