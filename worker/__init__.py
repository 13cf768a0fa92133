"""The grading worker: Celery tasks, sandbox backends and the orchestration of one grading run."""
