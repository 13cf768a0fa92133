"""The Celery application as the server sees it: a client that sends grading tasks by name.

The worker (worker/celery_app.py) registers the task implementations on this same app. The server never
imports worker code, so it can run on machines without torch's sandbox runtime.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery

from server.settings import Settings, get_settings

GRADE_TASK = "autograder.grade_submission"
QUEUES = ("cpu", "gpu")

log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    if settings.embedded_broker:
        settings.data_path.mkdir(parents=True, exist_ok=True)
    app = Celery("autograder", broker=settings.broker_url, backend=None)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="cpu",
        broker_connection_retry_on_startup=True,
        broker_transport_options=(
            # kombu's SQLAlchemy transport hands its options to create_engine: wait for SQLite's lock
            # instead of failing while the server and a worker write at the same moment.
            {"connect_args": {"timeout": 30}}
            if settings.embedded_broker
            # A message that is never acked (worker killed) comes back after this; the lease sweeper
            # usually re-sends the submission long before.
            else {"visibility_timeout": 3600}
        ),
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_grading(submission_id: int, *, queue: str, time_limit_s: float) -> bool:
    """Send the grading task. Called only after the submission row is committed.

    Returns False when the broker cannot be reached: the submission stays 'queued' and the sweeper sends it
    again, so nothing is lost.
    """
    soft = time_limit_s + 60
    try:
        get_celery().send_task(
            GRADE_TASK,
            args=[submission_id],
            queue=queue,
            soft_time_limit=soft,
            time_limit=soft + 30,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception:
        log.exception("could not enqueue submission %s; the sweeper will retry", submission_id)
        return False
    return True
