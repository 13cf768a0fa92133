"""Forging the grader's side of the conversation: fake result frames on stdout, claims added to the runner's
own messages, frames written straight onto the protocol descriptor (oversized, garbage, ahead of time), and
a message stuffed with tensors. Nothing a sandbox sends is trusted beyond the values the grader asked for."""

from __future__ import annotations

import pytest

from tests.attacks.conftest import Arena

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

# inputs_not_mutated (1 point) checks only that the inputs come back untouched, not the values returned.
UNCHECKED_VALUES = {"inputs_not_mutated"}


def test_forged_frames_on_stdout_only_reach_the_log(arena: Arena) -> None:
    forged = arena.grade("forge_stdout")
    assert (forged.status, forged.score) == ("graded", 1), forged.explain()
    assert forged.passed() == UNCHECKED_VALUES, forged.explain()
    attempts = forged.report("forge_stdout")
    assert attempts["at_import"]["fd1"] == attempts["in_call"]["fd1"] == "written", attempts
    assert "LLMG" in forged.student_log  # the frames are in the student's own log, where they do nothing


def test_claims_added_to_the_runners_messages_are_ignored(arena: Arena) -> None:
    hooked = arena.grade("forge_fields")
    assert hooked.report("forge_fields") == {"hooked": True}
    assert (hooked.status, hooked.score) == ("graded", 1), hooked.explain()
    assert hooked.passed() == UNCHECKED_VALUES, hooked.explain()
    assert hooked.staff["metrics"] == {}  # no speed for a submission that fails tests, whatever it claims
    arena.assert_healthy()


def test_frames_written_onto_the_protocol_descriptor_stop_the_run(arena: Arena) -> None:
    for kind in ("oversized", "garbage", "ahead"):
        forged = arena.grade("forge_frames", frame=kind)
        assert forged.report("forge_frames")["kind"] == kind
        assert (forged.status, forged.score) == ("failed", 0), forged.explain()
        assert "grading protocol" in forged.failure_reason, forged.explain()
        assert forged.elapsed_s < 20, forged.explain()
    arena.assert_healthy()


def test_a_message_stuffed_with_tensors_is_refused_before_it_is_decoded(arena: Arena) -> None:
    flooded = arena.grade("forge_flood", tensors=300_000)
    assert flooded.report("forge_flood")["tensors"] == 300_000
    assert (flooded.status, flooded.score) == ("failed", 0), flooded.explain()
    assert "grading protocol" in flooded.failure_reason, flooded.explain()
    arena.assert_healthy()
