"""What `make run` publishes: every package shipped under graders/, with deadlines, points, weights and leaderboards."""

from __future__ import annotations

from pathlib import Path

from server.bootstrap import bootstrap, course_packages
from server.db import get_session_factory
from server.settings import Settings
from tests.conftest import World

COURSE = {
    # slug: (grading, queue, weight, leaderboard metric)
    "hw1-tokenizer": ("auto", "cpu", 16, "bpe_train_ms"),
    "hw2-transformer": ("auto", "cpu", 16, "forward_backward_ms"),
    "hw3-flashattention": ("auto", "gpu", 16, "fwd_bwd_ms"),
    "hw4-moe-lora-finetune": ("auto", "cpu", 16, "heldout_loss"),
    "hw5-inference": ("auto", "cpu", 16, "tokens_per_s"),
    "project": ("manual", "manual", 20, None),
}


def test_the_course_ships_five_assignments_a_project_and_the_warm_up():
    slugs = [Path(path).name for path in course_packages()]
    assert sorted(slugs) == sorted([*COURSE, "warmup"])


def test_bootstrap_publishes_every_package_with_deadlines_points_and_boards(world: World, settings: Settings):
    with get_session_factory()() as session:
        bootstrap(session=session, settings=settings)
    listed = {
        item["slug"]: item
        for item in world.client.get("/api/assignments", headers=world.alice.headers).json()
    }
    assert set(COURSE) <= set(listed)
    weights = 0.0
    for slug, (grading, queue, weight, metric) in COURSE.items():
        item = listed[slug]
        assert item["published"] and item["grading"] == grading and item["queue"] == queue, slug
        assert item["points"] == 100 and item["due_at"] is not None, slug
        assert (item["leaderboard"] or {}).get("metric") == metric, slug
        settings_page = world.client.get(
            f"/api/courses/{world.course}/assignments/{slug}/settings", headers=world.instructor.headers
        ).json()
        assert settings_page["weight"] == weight, slug
        weights += settings_page["weight"]
    assert weights == 100  # five assignments make 80% of the course, the project 20%
    deadlines = [listed[slug]["due_at"] for slug in COURSE]
    assert deadlines == sorted(deadlines)  # the assignments come due in course order
