"""Similarity reports of an assignment, for the course's staff only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from server.assignments import service as assignments
from server.assignments.models import Assignment, SimilarityReport
from server.auth.models import User
from server.db import get_session_factory
from server.deps import CurrentUser, SessionDep
from server.errors import NotFound
from server.similarity import service
from server.similarity.service import ReportStatus, Scope

router = APIRouter(prefix="/api", tags=["similarity"])

PATH = "/courses/{course}/assignments/{slug}/similarity"
DEFAULT_PAGE = 50


class ReportIn(BaseModel):
    scope: Scope = Field(
        default=Scope.latest,
        description="'latest': each student's latest finished submission; 'counted': the one that counts under "
        "the assignment's counting rule; 'all': every finished submission.",
    )
    common_students: int | None = Field(
        default=None,
        ge=2,
        le=100_000,
        description="Code found in more students' submissions than this is common code and ignored "
        "(default: 10, or 10% of the students if that is more).",
    )


class SideOut(BaseModel):
    submission_id: int
    user_id: int
    student: str
    submitted_at: datetime
    similarity: float = Field(description="Share of this submission's own code found in the other one.")
    matched_tokens: int
    tokens: int = Field(description="Size of this submission's own code (handout and common code excluded).")


class RegionSideOut(BaseModel):
    file: str
    start_line: int
    end_line: int
    snippet: str
    snippet_truncated: bool


class RegionOut(BaseModel):
    tokens: int
    a: RegionSideOut
    b: RegionSideOut


class PairSummaryOut(BaseModel):
    rank: int
    similarity: float = Field(
        description="The larger of the two sides' similarities; pairs are ranked by it."
    )
    overlap_tokens: int
    a: SideOut = Field(description="The earlier submission of the two.")
    b: SideOut
    regions_total: int


class PairOut(PairSummaryOut):
    report_id: int
    regions: list[RegionOut]


class SkippedOut(BaseModel):
    submission_id: int
    student: str
    file: str | None
    reason: str


class ReportOut(BaseModel):
    id: int
    course: str
    assignment: str
    status: ReportStatus
    error: str | None
    note: str | None
    requested_by: str | None
    created_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    scope: Scope
    parameters: dict[str, Any]
    compared: int
    students: int
    skipped: list[SkippedOut]
    handout_problems: list[str]
    pairs_with_overlap: int
    truncated: bool = Field(description="More pairs overlapped than a report keeps; the best ones are kept.")
    min_similarity: float
    offset: int
    limit: int
    pairs_total: int = Field(description="Pairs at or above min_similarity.")
    pairs: list[PairSummaryOut]


def _staff_assignment(session: SessionDep, user: User, course: str, slug: str) -> Assignment:
    access = assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    return assignments.require_staff(access).assignment


def _report_out(
    session: SessionDep,
    assignment: Assignment,
    report: SimilarityReport,
    *,
    min_similarity: float,
    offset: int,
    limit: int,
) -> dict[str, Any]:
    result = report.result or {}
    status, error = ReportStatus(report.status), report.error
    if service.is_stale(report):
        status, error = ReportStatus.failed, service.stale_error()
    requester = session.get(User, report.requested_by_id) if report.requested_by_id else None
    ranked = [pair for pair in result.get("pairs", []) if pair["similarity"] >= min_similarity]
    return {
        "id": report.id,
        "course": assignment.course.slug,
        "assignment": assignment.slug,
        "status": status,
        "error": error,
        "note": result.get("note"),
        "requested_by": requester.username if requester else None,
        "created_at": report.created_at,
        "finished_at": report.finished_at,
        "duration_s": result.get("duration_s"),
        "scope": result.get("scope", Scope.latest.value),
        "parameters": result.get("parameters", {}),
        "compared": result.get("compared", 0),
        "students": result.get("students", 0),
        "skipped": result.get("skipped", []),
        "handout_problems": result.get("handout_problems", []),
        "pairs_with_overlap": result.get("pairs_with_overlap", 0),
        "truncated": result.get("truncated", False),
        "min_similarity": min_similarity,
        "offset": offset,
        "limit": limit,
        "pairs_total": len(ranked),
        "pairs": ranked[offset : offset + limit],
    }


@router.post(PATH, response_model=ReportOut, status_code=202)
def start_report(
    course: str, slug: str, body: ReportIn, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    """Start a similarity report; it is computed in the background: poll GET until its status is not running."""
    assignment = _staff_assignment(session, user, course, slug)
    report = service.request_report(
        session=session,
        assignment=assignment,
        actor=user,
        scope=body.scope,
        common_students=body.common_students,
    )
    session.commit()
    service.schedule(session_factory=get_session_factory(), report_id=report.id)
    return _report_out(session, assignment, report, min_similarity=0.0, offset=0, limit=DEFAULT_PAGE)


@router.get(PATH, response_model=ReportOut)
def get_report(
    course: str,
    slug: str,
    session: SessionDep,
    user: CurrentUser,
    report_id: int | None = None,
    min_similarity: Annotated[float, Query(ge=0, le=1)] = 0.0,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = DEFAULT_PAGE,
) -> dict[str, Any]:
    """The latest report (or ``report_id``): its status and the pairs ranked by similarity, a page at a time."""
    assignment = _staff_assignment(session, user, course, slug)
    report = service.latest_report(session=session, assignment=assignment, report_id=report_id)
    return _report_out(session, assignment, report, min_similarity=min_similarity, offset=offset, limit=limit)


@router.get(PATH + "/pairs/{rank}", response_model=PairOut)
def get_pair(
    course: str, slug: str, rank: int, session: SessionDep, user: CurrentUser, report_id: int | None = None
) -> dict[str, Any]:
    """One pair of the latest report (or ``report_id``) with its matching regions, by its rank (1 = most similar)."""
    assignment = _staff_assignment(session, user, course, slug)
    report = service.latest_report(session=session, assignment=assignment, report_id=report_id)
    pairs = (report.result or {}).get("pairs", [])
    if not 1 <= rank <= len(pairs):
        raise NotFound(
            f"Report {report.id} has no pair ranked {rank}; it has {len(pairs)} pairs"
            + (" (it is still running)." if report.status == ReportStatus.running.value else ".")
        )
    return {**pairs[rank - 1], "report_id": report.id}
