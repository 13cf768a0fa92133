"""Late policies: how late a submission is and what that costs, as pure functions of instants and a time zone.

Deadlines are stored in UTC. "Days" are days of the course's wall clock: one day late ends at the same local time
on the next calendar day, so across a daylight-saving change a day is 23 or 25 hours long, as students expect.
"Hours" are elapsed hours. A started unit counts as a whole one: one second late is one day (or hour) late.

Policies (the JSON stored in ``Assignment.late_policy``):

- ``{"kind": "hard"}``: nothing is accepted after the deadline.
- ``{"kind": "window", "per": "day" | "hour", "penalty_percent": P, "max_units": N}``: accepted up to N units
  late; each started unit multiplies the score by (1 - P/100) less, down to 0 (10% per day: one day late keeps
  90%, two days 80%).
- ``{"kind": "late_days", "max_units": N}``: each started day late spends one of the student's course-wide late
  days (``Course.late_days_budget``) at no penalty; at most N on this assignment (default: no cap beyond the
  budget). Later than the student has days for is not accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

Kind = Literal["hard", "window", "late_days"]
Unit = Literal["day", "hour"]
MAX_UNITS = 365 * 24


class PolicyError(ValueError):
    """The policy is not valid; the message says which field and why."""


@dataclass(frozen=True)
class LatePolicy:
    kind: Kind = "hard"
    per: Unit = "day"
    penalty_percent: float = 0.0
    max_units: int | None = None

    def to_json(self) -> dict[str, Any]:
        if self.kind == "hard":
            return {"kind": "hard"}
        if self.kind == "window":
            return {
                "kind": "window",
                "per": self.per,
                "penalty_percent": self.penalty_percent,
                "max_units": self.max_units,
            }
        return {"kind": "late_days", "max_units": self.max_units}

    def describe(self) -> str:
        """One plain-language sentence for students."""
        if self.kind == "hard":
            return "No late submissions: the deadline is final."
        if self.kind == "window":
            unit = "day" if self.per == "day" else "hour"
            return (
                f"Late submissions are accepted for {self.max_units} {unit}(s) after the deadline; each started "
                f"{unit} late costs {self.penalty_percent:g}% of the score."
            )
        cap = f", at most {self.max_units} on this assignment" if self.max_units is not None else ""
        return f"Late submissions spend your course late days (one per started day late{cap}) at no penalty."


def parse_policy(raw: Any) -> LatePolicy:
    if raw is None:
        return LatePolicy()
    if not isinstance(raw, dict):
        raise PolicyError("the late policy must be an object with a 'kind'")
    kind = raw.get("kind")
    allowed = {"hard": {"kind"}, "window": {"kind", "per", "penalty_percent", "max_units"}}.get(
        str(kind), {"kind", "max_units"}
    )
    if kind not in ("hard", "window", "late_days"):
        raise PolicyError("late_policy.kind must be one of hard, window, late_days")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PolicyError(f"late_policy.{unknown[0]} is not a field of a {kind!r} policy")
    if kind == "hard":
        return LatePolicy()
    max_units = raw.get("max_units")
    if max_units is not None and (type(max_units) is not int or not 0 <= max_units <= MAX_UNITS):
        raise PolicyError(f"late_policy.max_units must be a whole number from 0 to {MAX_UNITS}")
    if kind == "late_days":
        return LatePolicy(kind="late_days", max_units=max_units)
    per = raw.get("per", "day")
    if per not in ("day", "hour"):
        raise PolicyError("late_policy.per must be 'day' or 'hour'")
    penalty = raw.get("penalty_percent")
    if not isinstance(penalty, int | float) or isinstance(penalty, bool) or not 0 <= penalty <= 100:
        raise PolicyError("late_policy.penalty_percent must be a number from 0 to 100")
    if max_units is None:
        raise PolicyError("late_policy.max_units is required for a 'window' policy (how long it stays open)")
    return LatePolicy(kind="window", per=per, penalty_percent=float(penalty), max_units=max_units)


def unit_end(due: datetime, units: int, per: Unit, zone: ZoneInfo) -> datetime:
    """The instant ``units`` days (wall clock in ``zone``) or hours (elapsed) after ``due``."""
    if per == "hour":
        return due + timedelta(hours=units)
    local = due.astimezone(zone)
    # Aware + timedelta keeps the wall-clock time; the zone then gives the UTC offset on that date.
    shifted = (local.replace(tzinfo=None) + timedelta(days=units)).replace(tzinfo=zone, fold=local.fold)
    return shifted.astimezone(due.tzinfo)


def units_late(due: datetime, submitted: datetime, per: Unit, zone: ZoneInfo) -> int:
    """0 on time (at or before ``due``); else the number of started units after it."""
    if submitted <= due:
        return 0
    if per == "hour":
        return math.ceil((submitted - due).total_seconds() / 3600)
    # A first guess from elapsed time, corrected against real wall-clock day boundaries (23 h or 25 h days).
    units = max(1, math.ceil((submitted - due).total_seconds() / 86400) - 1)
    while units > 1 and submitted <= unit_end(due, units - 1, per, zone):
        units -= 1
    while submitted > unit_end(due, units, per, zone):
        units += 1
    return units


@dataclass(frozen=True)
class Lateness:
    """What lateness does to one submission's score."""

    units_late: int  # started days/hours after the student's deadline (0: on time)
    per: Unit
    multiplier: float  # applied to the autograded score
    accepted: bool  # False: too late for the policy (scores 0)
    late_days_used: int  # course late days this submission spends (late_days policies)

    def describe(self) -> str:
        if self.units_late == 0:
            return "on time"
        late = f"{self.units_late} {self.per}{'s' if self.units_late != 1 else ''} late"
        if not self.accepted:
            return f"{late}: too late to count"
        if self.late_days_used:
            return f"{late}: {self.late_days_used} late day(s) used"
        if self.multiplier < 1:
            return f"{late}: {100 * (1 - self.multiplier):g}% penalty"
        return late


def assess(
    policy: LatePolicy,
    *,
    due: datetime | None,
    submitted: datetime,
    zone: ZoneInfo,
    late_days_left: int = 0,
) -> Lateness:
    """How ``policy`` scores a submission made at ``submitted`` against the student's deadline ``due``.

    ``late_days_left``: the student's unspent course late days (not counting this assignment).
    """
    per: Unit = policy.per if policy.kind == "window" else "day"
    if due is None:
        return Lateness(0, per, 1.0, True, 0)
    units = units_late(due, submitted, per, zone)
    if units == 0:
        return Lateness(0, per, 1.0, True, 0)
    if policy.kind == "hard":
        return Lateness(units, per, 0.0, False, 0)
    if policy.kind == "window":
        assert policy.max_units is not None
        if units > policy.max_units:
            return Lateness(units, per, 0.0, False, 0)
        return Lateness(units, per, max(0.0, 1.0 - units * policy.penalty_percent / 100.0), True, 0)
    allowed = late_days_left if policy.max_units is None else min(late_days_left, policy.max_units)
    if units > allowed:
        return Lateness(units, per, 0.0, False, 0)
    return Lateness(units, per, 1.0, True, units)


def accepting_until(
    policy: LatePolicy, *, due: datetime | None, zone: ZoneInfo, late_days_left: int = 0
) -> datetime | None:
    """The last instant a submission still counts for this student (None: no deadline)."""
    if due is None:
        return None
    if policy.kind == "hard":
        return due
    if policy.kind == "window":
        assert policy.max_units is not None
        return unit_end(due, policy.max_units, policy.per, zone)
    allowed = late_days_left if policy.max_units is None else min(late_days_left, policy.max_units)
    return unit_end(due, allowed, "day", zone)
