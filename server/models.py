"""Every table, imported in one place for Alembic and for relationship resolution."""

from server.assignments.models import Assignment, Extension, GraderBundle, RateBucket, SimilarityReport
from server.audit.models import AuditEvent
from server.auth.models import ApiToken, BrowserSession, User
from server.courses.models import Course, Enrollment, Role
from server.db import Base
from server.rubrics.models import RubricScore
from server.submissions.models import Blob, GradingRun, ScoreOverride, Submission, SubmissionStatus

__all__ = [
    "ApiToken",
    "Assignment",
    "AuditEvent",
    "Base",
    "Blob",
    "BrowserSession",
    "Course",
    "Enrollment",
    "Extension",
    "GraderBundle",
    "GradingRun",
    "RateBucket",
    "Role",
    "RubricScore",
    "ScoreOverride",
    "SimilarityReport",
    "Submission",
    "SubmissionStatus",
    "User",
]
