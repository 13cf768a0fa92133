"""Runaway and destructive code: loops at import and in a call, SIGSTOP and ignored signals, a fork bomb, a
memory bomb, a gigabyte of output, full disks, and code that kills whatever it can name. Each run ends within
its limits with exactly the points earned before it ran away, and leaves nothing behind (Arena.grade checks
for surviving processes, files outside the job and host listeners reached)."""

from __future__ import annotations

import pytest

from tests.attacks.conftest import QUICK_LIMITS, Arena

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

STARTUP_S = float(QUICK_LIMITS["startup_timeout_s"])
CALL_S = float(QUICK_LIMITS["call_timeout_s"])
TIME_LIMIT_S = float(QUICK_LIMITS["time_limit_s"])
SOFTMAX_TESTS = {"softmax_basic", "softmax_other_dim", "softmax_large_logits", "softmax_half_precision"}
SOFTMAX_POINTS = 5.5
MIB = 2**20


def test_code_that_never_returns_is_cut_off_at_its_timeouts(arena: Arena) -> None:
    at_import = arena.grade("import_loop")
    assert (at_import.status, at_import.score) == ("failed", 0), at_import.explain()
    assert "did not start" in at_import.failure_reason, at_import.explain()
    assert at_import.elapsed_s < STARTUP_S + 10, at_import.explain()

    stopped = arena.grade("call_stop")
    assert stopped.report("call_stop") == {"stopping": True}
    assert (stopped.status, stopped.score) == ("failed", SOFTMAX_POINTS), stopped.explain()
    assert stopped.passed() == SOFTMAX_TESTS
    assert "rms_norm_basic" in stopped.failure_reason and "longer than" in stopped.failure_reason
    assert stopped.elapsed_s < TIME_LIMIT_S, stopped.explain()
    arena.assert_healthy()


def test_fork_and_memory_bombs_end_with_their_run(arena: Arena) -> None:
    forks = arena.grade("fork_bomb")
    assert (forks.status, forks.score) == ("failed", 0), forks.explain()
    assert forks.report("fork_bomb")["refused"], forks.explain()  # the process limit stopped the forking
    assert "longer than" in forks.failure_reason, forks.explain()
    assert forks.elapsed_s < CALL_S + 15, forks.explain()

    memory = arena.grade("memory_bomb")
    assert (memory.status, memory.score) == ("failed", 0), memory.explain()
    assert memory.report("memory_bomb")["mib"] <= int(QUICK_LIMITS["memory_mb"]), memory.explain()
    assert "memory" in memory.failure_reason, memory.explain()
    assert memory.elapsed_s < CALL_S + 15, memory.explain()
    arena.assert_healthy()


def test_floods_of_output_and_data_are_capped(arena: Arena) -> None:
    noisy = arena.grade("output_flood")
    assert (noisy.status, noisy.score) == ("graded", 10), noisy.explain()
    assert noisy.log_truncated and len(noisy.student_log.encode()) <= arena.world.settings.log_bytes
    assert "bytes of output omitted" in noisy.student_log
    assert noisy.elapsed_s < 30, noisy.explain()

    filler = arena.grade("disk_filler", work_files=3)
    assert (filler.status, filler.score) == ("graded", 10), filler.explain()
    filled = filler.report("disk_filler")
    limits = arena.sandbox_limits()
    for private in ("tmp", "shm"):  # tmpfs mounts of their own, of a fixed size
        assert filled[private]["stopped_by"] == "ENOSPC", filled
        assert limits.tmp_bytes - MIB <= filled[private]["total"] <= limits.tmp_bytes, filled
    assert filled["work"]["files"] == [limits.max_file_bytes] * 3, filled  # each file stops at RLIMIT_FSIZE
    # Arena.grade has checked that the job directory, with its 3 x 64 MiB, is gone from the host.
    arena.assert_healthy()


def test_killing_everything_in_reach_only_ends_its_own_run(arena: Arena) -> None:
    killer = arena.grade("killer")
    kills = killer.report("killer")
    # The runner's parent is the sandbox's init (pid 1 of its own namespace): immune to its children's signals.
    assert kills["ppid"] == 1 and kills["child_killed_by_kill_minus_1"], kills
    assert kills["worker"] == "ESRCH", kills  # the worker's pid does not exist in the sandbox's namespace
    assert kills["suicide"], kills
    assert (killer.status, killer.score) == ("failed", SOFTMAX_POINTS), killer.explain()
    assert killer.passed() == SOFTMAX_TESTS
    assert "exited during test rms_norm_basic" in killer.failure_reason, killer.explain()
    arena.assert_healthy()
