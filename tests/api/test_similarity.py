"""Code similarity across an assignment's submissions: ranking, handout exclusion, regions, access, bad data."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from server import migrate
from server.assignments.models import Assignment, SimilarityReport
from server.audit.models import AuditEvent
from server.auth.models import User
from server.db import get_session_factory, utcnow
from server.errors import Conflict
from server.settings import Settings
from server.similarity import engine, service
from server.similarity.service import ReportStatus, Scope
from server.submissions.models import Blob, Submission, SubmissionStatus
from tests.api.helpers import finish, submit
from tests.conftest import REPO, Account, World

HANDOUT = (REPO / "graders" / "warmup" / "handout" / "warmup.py").read_text()

# One student's solution ...
ORIGINAL = '''"""Warm-up assignment: softmax and RMSNorm."""

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    # Subtract the running maximum so that exp never overflows, then normalise.
    largest = torch.max(x, dim=dim, keepdim=True).values
    shifted = torch.exp(x.float() - largest.float())
    denominator = torch.sum(shifted, dim=dim, keepdim=True)
    result = shifted / denominator
    return result.to(dtype=x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    squares = torch.square(x.float())
    mean_square = torch.mean(squares, dim=-1, keepdim=True)
    scale = torch.reciprocal(torch.sqrt(mean_square + eps))
    normalised = x.float() * scale
    return (normalised * weight.float()).to(dtype=x.dtype)
'''

# ... and a lightly edited copy of it: names changed, functions swapped, comments and blank lines rewritten.
EDITED = '''"""My warm-up."""
import torch


def rms_norm(inp: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    sq = torch.square(inp.float())

    ms = torch.mean(sq, dim=-1, keepdim=True)   # mean of squares
    s = torch.reciprocal(torch.sqrt(ms + eps))
    normed = inp.float() * s
    return (normed * w.float()).to(dtype=inp.dtype)


def softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    # numerically stable version
    m = torch.max(logits, dim=dim, keepdim=True).values
    e = torch.exp(logits.float() - m.float())
    total = torch.sum(e, dim=dim, keepdim=True)
    out = e / total
    return out.to(dtype=logits.dtype)
'''

# Three correct solutions written independently of it and of each other.
SECOND = """import torch


def softmax(x, dim=-1):
    x32 = x.to(torch.float32)
    x32 = x32 - x32.amax(dim, keepdim=True)
    numerator = x32.exp()
    return (numerator / numerator.sum(dim, keepdim=True)).type_as(x)


def rms_norm(x, weight, eps=1e-6):
    x32 = x.to(torch.float32)
    rms = x32.pow(2).mean(-1, keepdim=True).add(eps).rsqrt()
    return (x32 * rms).type_as(x) * weight
"""

THIRD = '''import math

import torch


class _Upcast:
    """Computes in float32 and casts the result back to the input's dtype."""

    def __init__(self, tensor):
        self.dtype = tensor.dtype
        self.value = tensor.float()

    def back(self, result):
        return result.to(self.dtype)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    up = _Upcast(x)
    moved = up.value.transpose(dim, -1)
    peak = moved.max(dim=-1, keepdim=True)[0]
    peak = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)
    weights = torch.exp(moved - peak)
    probs = weights / weights.sum(dim=-1, keepdim=True)
    return up.back(probs.transpose(dim, -1))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    up = _Upcast(x)
    features = up.value.shape[-1]
    norm = torch.linalg.vector_norm(up.value, dim=-1, keepdim=True) / math.sqrt(features)
    rms = torch.sqrt(norm * norm + eps)
    return up.back(up.value / rms * weight.float())
'''

FOURTH = """import torch


def softmax(x, dim=-1):
    orig_dtype = x.dtype
    values = x.double() if x.dtype == torch.float64 else x.float()
    values = values.movedim(dim, 0)
    out = torch.empty_like(values)
    top = values.max(0).values
    total = torch.zeros_like(top)
    for i in range(values.shape[0]):
        out[i] = torch.exp(values[i] - top)
        total += out[i]
    out = out / total
    return out.movedim(0, dim).to(orig_dtype)


def rms_norm(x, weight, eps=1e-6):
    f = x.float()
    denom = (f * f).sum(dim=-1, keepdim=True) / f.shape[-1]
    return (f / (denom + eps) ** 0.5 * weight).to(x.dtype)
"""

# THIRD copied with its class and functions renamed and in reverse order.
THIRD_EDITED = '''import torch
import math


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    c = Caster(x)
    d = c.data.shape[-1]
    n = torch.linalg.vector_norm(c.data, dim=-1, keepdim=True) / math.sqrt(d)
    r = torch.sqrt(n * n + eps)
    return c.restore(c.data / r * weight.float())


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    c = Caster(x)
    t = c.data.transpose(dim, -1)
    mx = t.max(dim=-1, keepdim=True)[0]
    mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    w = torch.exp(t - mx)
    p = w / w.sum(dim=-1, keepdim=True)
    return c.restore(p.transpose(dim, -1))


class Caster:
    """float32 inside."""

    def __init__(self, t):
        self.dtype = t.dtype
        self.data = t.float()

    def restore(self, out):
        return out.to(self.dtype)
'''


def account(world: World, username: str, role: str = "student") -> Account:
    """An account with an API token and no password (hashing one costs more than these tests need)."""
    from server.auth import service as auth_service
    from server.courses import service as courses
    from server.courses.models import Role

    with world.session() as session:
        user = auth_service.create_user(session=session, username=username, password=None)
        course = courses.get_course(session=session, slug=world.course)
        courses.enroll(session=session, course=course, user=user, role=Role(role))
        token, _ = auth_service.create_api_token(
            session=session, user=user, name="tests", expires_in_days=None
        )
        session.commit()
        return Account(username, "", token, user.id)


@pytest.fixture
def students(world: World) -> dict[str, Account]:
    return {
        "alice": world.alice,
        "bob": world.bob,
        **{name: account(world, name) for name in ("carol", "dave", "erin")},
    }


def url(world: World, suffix: str = "") -> str:
    return f"/api/courses/{world.course}/assignments/warmup/similarity{suffix}"


def submitted(world: World, account: Account, code: str | bytes) -> int:
    response = submit(world, account, code.encode() if isinstance(code, str) else code)
    assert response.status_code == 201, response.text
    submission_id = int(response.json()["id"])
    finish(world, submission_id)
    return submission_id


def report(world: World, account: Account | None = None, **body: Any) -> dict[str, Any]:
    """Start a report and wait for it, as a client polls."""
    account = account or world.instructor
    response = world.client.post(url(world), json=body, headers=account.headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"
    deadline = time.monotonic() + 30
    while True:
        current = world.client.get(url(world), params={"limit": 200}, headers=account.headers).json()
        if current["status"] != "running":
            return current
        assert time.monotonic() < deadline, "the report did not finish in 30 s"
        time.sleep(0.05)


def pair_of(result: dict[str, Any], first: str, second: str) -> dict[str, Any] | None:
    wanted = {first, second}
    return next((p for p in result["pairs"] if {p["a"]["student"], p["b"]["student"]} == wanted), None)


def test_a_lightly_edited_copy_ranks_above_unrelated_solutions(world: World, students: dict[str, Account]):
    for name, code in {
        "alice": ORIGINAL,
        "bob": EDITED,
        "carol": SECOND,
        "dave": THIRD,
        "erin": FOURTH,
    }.items():
        submitted(world, students[name], code)
    result = report(world)
    assert result["status"] == "done" and result["error"] is None
    assert result["compared"] == 5 and result["students"] == 5 and result["skipped"] == []
    top = result["pairs"][0]
    assert {top["a"]["student"], top["b"]["student"]} == {"alice", "bob"}
    # Alice submitted first, so she is side a; the copy covers nearly all of each side's own code.
    assert (top["a"]["student"], top["rank"]) == ("alice", 1)
    assert top["a"]["similarity"] > 0.85 and top["b"]["similarity"] > 0.85
    assert top["overlap_tokens"] > 150 and top["regions_total"] == 2
    others = result["pairs"][1:]
    assert others and all(pair["similarity"] < 0.5 for pair in others)
    assert [pair["rank"] for pair in result["pairs"]] == list(range(1, len(result["pairs"]) + 1))
    assert result["parameters"]["noise_tokens"] == engine.NOISE_TOKENS


def test_the_untouched_handout_does_not_count_as_similarity(world: World, students: dict[str, Account]):
    submitted(world, students["alice"], HANDOUT)
    submitted(world, students["bob"], HANDOUT.replace("    ", "\t").replace('"""Warm-up', '"""My warm-up'))
    submitted(world, students["carol"], SECOND)
    result = report(world)
    assert result["status"] == "done" and result["compared"] == 3
    assert result["pairs"] == [] and result["pairs_with_overlap"] == 0
    assert result["parameters"]["handout_files"] == 2  # warmup.py and test_public.py


def test_handout_docstrings_kept_around_different_solutions_are_not_similarity(
    world: World, students: dict[str, Account]
):
    def into_handout(solution: str) -> str:
        """The handout's file, docstrings and all, with each function's body taken from the solution."""
        code = HANDOUT
        for name in ("softmax", "rms_norm"):
            body = solution.split(f"def {name}(", 1)[1].split("\n\n\n", 1)[0].split("\n", 1)[1]
            code = code.replace(
                f'    raise NotImplementedError("{name} is not implemented yet")\n', body + "\n"
            )
        assert "NotImplementedError" not in code
        return code

    submitted(world, students["alice"], into_handout(ORIGINAL))
    submitted(world, students["bob"], into_handout(SECOND))
    result = report(world)
    pair = pair_of(result, "alice", "bob")
    assert pair is None or pair["similarity"] < 0.3


def function_lines(code: str) -> dict[str, range]:
    """Top-level ``def``/``class`` name -> its line numbers (1-based), up to the next top-level statement."""
    lines = code.split("\n")
    starts = [
        (number, line.split()[1].split("(")[0].rstrip(":"))
        for number, line in enumerate(lines, start=1)
        if line.startswith(("def ", "class "))
    ]
    spans = {}
    for (start, name), (end, _) in zip(starts, [*starts[1:], (len(lines) + 1, "")], strict=True):
        last = end - 1
        while not lines[last - 1].strip():
            last -= 1
        spans[name] = range(start, last + 1)
    return spans


def test_regions_point_at_the_matching_lines_of_both_files(world: World, students: dict[str, Account]):
    submitted(world, students["alice"], THIRD)
    # Windows line endings and leading blank lines must not shift the lines reported for the copy.
    submitted(world, students["bob"], ("\n\n" + THIRD_EDITED).replace("\n", "\r\n"))
    submitted(world, students["carol"], SECOND)
    result = report(world)
    assert result["pairs"][0]["rank"] == 1
    assert {result["pairs"][0]["a"]["student"], result["pairs"][0]["b"]["student"]} == {"alice", "bob"}
    pair = world.client.get(url(world, "/pairs/1"), headers=world.instructor.headers).json()
    assert pair["report_id"] == result["id"] and pair["regions_total"] == len(pair["regions"])
    in_alice = function_lines(THIRD)
    in_bob = {name: range(r.start + 2, r.stop + 2) for name, r in function_lines(THIRD_EDITED).items()}
    renamed = {"_Upcast": "Caster", "softmax": "softmax", "rms_norm": "rms_norm"}
    covered = set()
    for region in pair["regions"]:
        a, b = region["a"], region["b"]
        assert a["file"] == b["file"] == "warmup.py"
        name = next(n for n, span in in_alice.items() if a["start_line"] in span and a["end_line"] in span)
        span = in_bob[renamed[name]]
        assert b["start_line"] in span and b["end_line"] in span, (name, region)
        covered.add(name)
        assert a["snippet"].split("\n")[0] == THIRD.split("\n")[a["start_line"] - 1]
        assert b["snippet"].split("\n")[0] == ("\n\n" + THIRD_EDITED).split("\n")[b["start_line"] - 1]
    assert covered == set(renamed)


def test_the_tokenizer_filters_exactly_as_copydetect_does():
    from copydetect.utils import filter_code  # copydetect imports matplotlib: only in the test that uses it

    for code in (ORIGINAL, EDITED, SECOND, THIRD, FOURTH, THIRD_EDITED, HANDOUT):
        assert engine.tokenize(code).text == filter_code(code, "warmup.py")[0]


def own_code_size(code: str) -> int:
    """The size of a file's own code as the engine measures it, with the warm-up handout excluded."""
    copy = engine.CodeSubmission(2, 2, "copy", utcnow(), (engine.SourceFile("warmup.py", code),))
    original = engine.CodeSubmission(1, 1, "original", utcnow(), (engine.SourceFile("warmup.py", code),))
    result = engine.compare(
        [original, copy], boilerplate=engine.boilerplate_hashes([HANDOUT]), common_students=10
    )
    return int(result["pairs"][0]["a"]["tokens"])


def test_code_a_student_repeats_counts_each_time_with_handout_code_excluded():
    # copydetect 0.5 drops the repeats of a k-gram whenever there is boilerplate; they are the student's code.
    twice = ORIGINAL + "\n\n" + ORIGINAL.split("\n\n\n", 1)[1].replace("def softmax", "def softmax_again")
    once = own_code_size(ORIGINAL)
    assert own_code_size(twice) > once + 0.4 * once


def test_students_are_refused_and_outsiders_see_nothing(world: World, students: dict[str, Account]):
    for method, suffix in (("post", ""), ("get", ""), ("get", "/pairs/1")):
        kwargs: dict[str, Any] = {"json": {}} if method == "post" else {}
        student = getattr(world.client, method)(url(world, suffix), headers=world.alice.headers, **kwargs)
        assert student.status_code == 403, suffix
        assert "TAs and instructors" in student.json()["detail"]
        outsider = getattr(world.client, method)(url(world, suffix), headers=world.outsider.headers, **kwargs)
        assert outsider.status_code == 404, suffix
    assert world.client.get(url(world)).status_code == 401


def test_a_ta_may_start_a_report_and_the_request_is_audited(world: World, students: dict[str, Account]):
    result = report(world, world.ta, scope="all")
    assert result["requested_by"] == "tina" and result["scope"] == "all"
    with world.session() as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "similarity.request"))
        assert event is not None and event.actor_id == world.ta.user_id
        assert event.details["report_id"] == result["id"] and event.details["scope"] == "all"


def test_an_assignment_without_submissions_gives_an_empty_report_that_says_so(world: World):
    assert world.client.get(url(world), headers=world.instructor.headers).json()["code"] == "no_report"
    result = report(world)
    assert result["status"] == "done" and result["pairs"] == [] and result["compared"] == 0
    assert result["note"] == "There are no finished student submissions to compare yet."
    missing = world.client.get(url(world, "/pairs/1"), headers=world.instructor.headers)
    assert missing.status_code == 404 and "has 0 pairs" in missing.json()["detail"]


def stored_submission(world: World, account: Account, data: bytes) -> int:
    """A submission whose archive in the database is ``data``, as a damaged or tampered row would be."""
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
        assert assignment is not None
        sha256 = hashlib.sha256(data).hexdigest()
        session.add(Blob(sha256=sha256, size=len(data), data=data))
        submission = Submission(
            assignment_id=assignment.id,
            user_id=account.user_id,
            archive_sha256=sha256,
            file_names=["warmup.py"],
            bundle_id=assignment.bundle_id,
            queue="cpu",
            status=SubmissionStatus.graded,
        )
        session.add(submission)
        session.commit()
        return submission.id


def test_a_malformed_archive_is_listed_as_skipped_and_the_rest_is_compared(
    world: World, students: dict[str, Account]
):
    submitted(world, students["alice"], ORIGINAL)
    submitted(world, students["bob"], EDITED)
    broken = stored_submission(world, students["carol"], b"\x1f\x8bnot really gzip at all")
    result = report(world)
    assert result["status"] == "done" and result["compared"] == 2
    assert [entry["submission_id"] for entry in result["skipped"]] == [broken]
    assert result["skipped"][0]["student"] == "carol"
    assert result["skipped"][0]["reason"].startswith("Its archive could not be read:")
    assert {result["pairs"][0]["a"]["student"], result["pairs"][0]["b"]["student"]} == {"alice", "bob"}


def test_staff_and_unfinished_submissions_are_not_compared(world: World, students: dict[str, Account]):
    submitted(world, students["alice"], ORIGINAL)
    submitted(world, world.ta, EDITED)
    queued = submit(world, students["bob"], EDITED.encode())
    assert queued.status_code == 201
    result = report(world)
    assert result["compared"] == 1 and result["pairs"] == []
    assert result["note"] == "Only one student has Python code to compare, so there are no pairs."


def test_scope_all_compares_every_submission_but_never_a_student_with_themselves(
    world: World, students: dict[str, Account]
):
    first = submitted(world, students["alice"], ORIGINAL)
    submitted(world, students["alice"], SECOND)
    submitted(world, students["bob"], EDITED)
    latest = report(world)
    assert latest["scope"] == "latest" and latest["compared"] == 2
    assert pair_of(latest, "alice", "bob") is None  # her latest solution is her own
    every = report(world, scope="all")
    assert every["compared"] == 3
    assert all(pair["a"]["student"] != pair["b"]["student"] for pair in every["pairs"])
    top = every["pairs"][0]
    assert {top["a"]["submission_id"], top["b"]["submission_id"]} >= {first}
    assert top["similarity"] > 0.85


def test_scope_counted_compares_the_submission_that_counts(world: World, students: dict[str, Account]):
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
        assert assignment is not None
        assignment.counting = "best"
        session.commit()
    best = submit(world, students["alice"], ORIGINAL.encode()).json()["id"]
    finish(world, best, score=10.0)
    later = submit(world, students["alice"], SECOND.encode()).json()["id"]
    finish(world, later, score=2.0)
    submitted(world, students["bob"], EDITED)
    result = report(world, scope="counted")
    top = result["pairs"][0]
    assert top["a"]["submission_id"] == best and top["similarity"] > 0.85


def test_pairs_are_paged_and_filtered_by_minimum_similarity(world: World, students: dict[str, Account]):
    for name, code in {"alice": ORIGINAL, "bob": EDITED, "carol": SECOND, "dave": THIRD}.items():
        submitted(world, students[name], code)
    full = report(world)
    assert full["pairs_total"] >= 3
    high = world.client.get(url(world), params={"min_similarity": 0.8}, headers=world.ta.headers).json()
    assert [pair["rank"] for pair in high["pairs"]] == [1] and high["pairs_total"] == 1
    page = world.client.get(url(world), params={"offset": 1, "limit": 1}, headers=world.ta.headers).json()
    assert [pair["rank"] for pair in page["pairs"]] == [2] and page["pairs_total"] == full["pairs_total"]
    bad = world.client.get(url(world), params={"min_similarity": 2}, headers=world.ta.headers)
    assert bad.status_code == 422 and "min_similarity" in bad.json()["detail"]
    older = world.client.get(url(world), params={"report_id": full["id"] + 1}, headers=world.ta.headers)
    assert older.status_code == 404


def test_a_report_that_cannot_be_computed_is_failed_with_the_reason(
    world: World, students: dict[str, Account], monkeypatch: pytest.MonkeyPatch
):
    submitted(world, students["alice"], ORIGINAL)

    def broken(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("the comparison broke")

    monkeypatch.setattr(engine, "compare", broken)
    result = report(world)
    assert result["status"] == "failed" and "the comparison broke" in result["error"]
    assert result["finished_at"] is not None


def running_report(world: World) -> int:
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
        actor = session.get(User, world.instructor.user_id)
        assert assignment is not None and actor is not None
        created = service.request_report(
            session=session, assignment=assignment, actor=actor, scope=Scope.latest, common_students=None
        )
        session.commit()
        return created.id


def test_a_second_report_waits_for_the_running_one_unless_it_was_interrupted(world: World):
    running = running_report(world)
    refused = world.client.post(url(world), json={}, headers=world.ta.headers)
    assert refused.status_code == 409 and refused.json()["code"] == "similarity_running"
    with world.session() as session:
        row = session.get(SimilarityReport, running)
        assert row is not None
        row.created_at = utcnow() - service.STALE_AFTER - timedelta(minutes=1)
        session.commit()
    shown = world.client.get(url(world), headers=world.ta.headers).json()
    assert shown["status"] == "failed" and "interrupted" in shown["error"]
    result = report(world)
    assert result["id"] != running and result["status"] == "done"
    with world.session() as session:
        interrupted = session.get(SimilarityReport, running)
        assert interrupted is not None and interrupted.status == ReportStatus.failed


def test_bad_request_bodies_are_refused_plainly(world: World):
    for body, field in (({"scope": "everything"}, "scope"), ({"common_students": 1}, "common_students")):
        response = world.client.post(url(world), json=body, headers=world.instructor.headers)
        assert response.status_code == 422 and field in response.json()["detail"]


@pytest.fixture
def pg_world(configure: Callable[..., Settings], request: pytest.FixtureRequest) -> Iterator[World]:
    """The course on PostgreSQL, with the accounts these tests use."""
    from server.bootstrap import bootstrap
    from server.main import create_app

    settings = configure(database__url=request.getfixturevalue("pg_database"))
    migrate.upgrade()
    with get_session_factory()() as session:
        bootstrap(session=session, settings=settings, packages=[REPO / "graders" / "warmup"])
    built = World(
        settings, TestClient(create_app(settings, run_sweeper=False)), settings.course_slug, *[None] * 5
    )  # type: ignore[arg-type]
    built.instructor, built.alice, built.bob = (
        account(built, "prof", "instructor"),
        account(built, "alice"),
        account(built, "bob"),
    )
    with built.client:
        yield built


@pytest.mark.postgres
def test_postgresql_ranks_the_copy_first_and_starts_one_report_for_two_simultaneous_requests(
    pg_world: World,
):
    world = pg_world
    submitted(world, world.alice, ORIGINAL)
    submitted(world, world.bob, EDITED)
    carol = account(world, "carol")
    submitted(world, carol, SECOND)
    result = report(world)
    assert {result["pairs"][0]["a"]["student"], result["pairs"][0]["b"]["student"]} == {"alice", "bob"}

    # Two staff request a report at the same moment: the second waits on the first's lock, then sees its
    # report running and is refused, instead of starting a duplicate.
    first_locked = threading.Event()
    outcomes: list[str] = []

    def request(hold: bool) -> None:
        with get_session_factory()() as session:
            assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
            actor = session.get(User, world.instructor.user_id)
            assert assignment is not None and actor is not None
            try:
                service.request_report(
                    session=session,
                    assignment=assignment,
                    actor=actor,
                    scope=Scope.latest,
                    common_students=None,
                )
            except Conflict:
                outcomes.append("conflict")
                return
            if hold:
                first_locked.set()
                time.sleep(0.5)
            session.commit()
            outcomes.append("created")

    holder = threading.Thread(target=request, args=(True,))
    holder.start()
    assert first_locked.wait(10)
    request(False)
    holder.join()
    assert sorted(outcomes) == ["conflict", "created"]
