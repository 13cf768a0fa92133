"""Gaming the checks from inside the sandbox: monkeypatched comparisons and clocks, cached and replayed
answers, predicted inputs, in-place mutation, answers filled in after returning, and every malformed kind of
output. Each attack gets exactly the points its computed values earn."""

from __future__ import annotations

import pytest

from tests.attacks.conftest import Arena

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

# inputs_not_mutated (1 point) checks only that the inputs come back untouched, not the values returned.
UNCHECKED_VALUES = {"inputs_not_mutated"}
RMS_NORM_TESTS = {"rms_norm_basic", "rms_norm_eps", "rms_norm_batch_3d"}  # 1.5 + 1 + 1 points
SLEEP_S = 0.03


def test_monkeypatched_comparisons_and_clocks_stay_in_the_sandbox(arena: Arena) -> None:
    patched = arena.grade("patch_checks")
    assert patched.report("patch_checks") == {"patched": True}
    assert (patched.status, patched.score) == ("graded", 1), patched.explain()
    assert patched.passed() == UNCHECKED_VALUES

    slow = arena.grade("patch_clock", sleep_s=SLEEP_S)
    assert slow.report("patch_clock") == {"frozen": True}
    assert (slow.status, slow.score) == ("graded", 10), slow.explain()
    metrics = slow.staff["metrics"]
    # The leaderboard's figure is the grader's wall clock around each call: the sleep is in it.
    assert metrics["softmax_ms"] >= SLEEP_S * 1000, metrics
    # What the sandbox measured with its frozen clock is reported beside it, and ranks nothing.
    assert metrics.get("softmax_ms_sandbox", 0.0) < SLEEP_S * 1000 / 2, metrics
    board = arena.world.client.get(
        f"/api/courses/{arena.world.course}/assignments/warmup/leaderboard", headers=arena.world.alice.headers
    ).json()
    mine = [entry for entry in board["entries"] if entry["is_you"]]
    assert len(mine) == 1 and mine[0]["metric"] == pytest.approx(metrics["softmax_ms"]), board
    arena.assert_healthy()


def test_cached_replayed_and_predicted_answers_score_nothing(arena: Arena) -> None:
    cached = arena.grade("cache_in_run")
    cache = cached.report("cache")
    # One honest answer (the first call), then stale (pointer or shape hits) or missing ones: every test fails
    # at its first call, and no input ever comes round twice, so the content cache is never hit.
    assert cache["computed"] > 1 and cache["hits"]["content"] == 0 and sum(cache["hits"].values()) > 0, cache
    assert cache["pending_requests"] is False, cache  # no later inputs to batch while the first call runs
    assert (cached.status, cached.score) == ("graded", 1), cached.explain()
    assert cached.passed() == UNCHECKED_VALUES

    logger = arena.grade("digest_logger")
    assert (logger.status, logger.score) == ("graded", 10), logger.explain()
    known = logger.report("digests")["seen"]
    assert len(known) > 20
    replayer = arena.grade("digest_replayer", known=known)
    assert replayer.report("replay")["hits"] == 0, replayer.report("replay")  # fresh seed, fresh inputs
    assert (replayer.status, replayer.score) == ("graded", 1), replayer.explain()

    predictor = arena.grade("predict_seed")
    prediction = predictor.report("predict")
    assert prediction["matched"] is None and prediction["tried"] > 10_000, prediction
    assert (predictor.status, predictor.score) == ("graded", 1), predictor.explain()
    arena.assert_healthy()


def test_inputs_mutated_in_place_are_judged_against_the_graders_copy(arena: Arena) -> None:
    mutated = arena.grade("mutate")
    assert (mutated.status, mutated.score) == ("graded", 3.5), mutated.explain()
    assert mutated.passed() == RMS_NORM_TESTS, mutated.explain()
    assert "modified its input" in mutated.results["inputs_not_mutated"]["message"]
    arena.assert_healthy()


def test_hiding_an_in_place_mutation_does_not_earn_inputs_not_mutated(arena: Arena) -> None:
    hidden = arena.grade("mutate_hidden")
    assert hidden.report("mutate_hidden")["hooked"]
    assert (hidden.status, hidden.score) == ("graded", 9), hidden.explain()
    assert "inputs_not_mutated" not in hidden.passed(), hidden.explain()


def test_answers_filled_in_after_returning_and_daemons_left_behind(arena: Arena) -> None:
    late = arena.grade("async_fill")
    assert late.report("async_fill") == {"daemon_started": True}
    assert (late.status, late.score) == ("graded", 1), late.explain()
    assert late.passed() == UNCHECKED_VALUES
    # Arena.grade has checked that no process of the sandbox uid survived the run.
    arena.assert_healthy()


def test_malformed_outputs_are_refused(arena: Arena) -> None:
    unsendable = arena.grade("bad_unsendable")
    forms = unsendable.report("bad_unsendable")["forms"]
    assert forms == ["subclass", "parameter", "list", "numpy", "meta", "sparse", "lazy", "huge"], forms
    assert (unsendable.status, unsendable.score) == ("graded", 0), unsendable.explain()
    assert "expected a torch.Tensor" in unsendable.results["softmax_basic"]["message"], unsendable.explain()
    refused = unsendable.results["inputs_not_mutated"][
        "message"
    ]  # the 300 MiB tensor: over the message limits
    assert "sent" in refused and "does not match" not in refused, unsendable.explain()

    flawed = arena.grade("bad_values")
    assert flawed.report("bad_values")["flaws"][:7] == [
        "float64",
        "half",
        "extra_dim",
        "nan",
        "rounded",
        "shuffled",
        "float64",
    ]
    assert (flawed.status, flawed.score) == ("graded", 1), flawed.explain()
    assert flawed.passed() == UNCHECKED_VALUES
    arena.assert_healthy()
