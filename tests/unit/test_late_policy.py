"""Late policies at their boundaries: one second before and after each deadline and each late-day boundary, across
daylight-saving changes, with the course's wall clock deciding what "a day late" means."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from server.policy.late import LatePolicy, PolicyError, accepting_until, assess, parse_policy, units_late

NEW_YORK = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")
SECOND = timedelta(seconds=1)

# 23:59 local the evening before the spring-forward night (2027-03-14 02:00 EST -> 03:00 EDT): EST, UTC-5.
DUE_BEFORE_SPRING = datetime(2027, 3, 13, 23, 59, tzinfo=NEW_YORK).astimezone(UTC)
# 23:59 local the evening before the fall-back night (2026-11-01 02:00 EDT -> 01:00 EST): EDT, UTC-4.
DUE_BEFORE_FALL = datetime(2026, 10, 31, 23, 59, tzinfo=NEW_YORK).astimezone(UTC)

WINDOW = LatePolicy(kind="window", per="day", penalty_percent=10, max_units=3)


def test_a_day_late_ends_at_the_same_wall_clock_time_even_when_the_day_has_23_hours():
    one_day_late_until = datetime(2027, 3, 14, 23, 59, tzinfo=NEW_YORK).astimezone(UTC)
    assert one_day_late_until - DUE_BEFORE_SPRING == timedelta(hours=23)
    assert units_late(DUE_BEFORE_SPRING, DUE_BEFORE_SPRING, "day", NEW_YORK) == 0
    assert units_late(DUE_BEFORE_SPRING, DUE_BEFORE_SPRING + SECOND, "day", NEW_YORK) == 1
    assert units_late(DUE_BEFORE_SPRING, one_day_late_until - SECOND, "day", NEW_YORK) == 1
    assert units_late(DUE_BEFORE_SPRING, one_day_late_until, "day", NEW_YORK) == 1
    assert units_late(DUE_BEFORE_SPRING, one_day_late_until + SECOND, "day", NEW_YORK) == 2
    # 24 elapsed hours is already into the second (wall-clock) day.
    assert units_late(DUE_BEFORE_SPRING, DUE_BEFORE_SPRING + timedelta(hours=24), "day", NEW_YORK) == 2


def test_a_day_late_has_25_hours_across_the_fall_back_night():
    one_day_late_until = datetime(2026, 11, 1, 23, 59, tzinfo=NEW_YORK).astimezone(UTC)
    assert one_day_late_until - DUE_BEFORE_FALL == timedelta(hours=25)
    assert (
        units_late(DUE_BEFORE_FALL, DUE_BEFORE_FALL + timedelta(hours=24, minutes=30), "day", NEW_YORK) == 1
    )
    assert units_late(DUE_BEFORE_FALL, one_day_late_until, "day", NEW_YORK) == 1
    assert units_late(DUE_BEFORE_FALL, one_day_late_until + SECOND, "day", NEW_YORK) == 2


@pytest.mark.parametrize(
    ("offset", "multiplier", "accepted"),
    [
        (-SECOND, 1.0, True),
        (timedelta(0), 1.0, True),
        (SECOND, 0.9, True),
        (timedelta(hours=23), 0.9, True),  # the 23-hour first day ends exactly here
        (timedelta(hours=23) + SECOND, 0.8, True),
        (timedelta(days=2, hours=23), 0.7, True),  # three wall-clock days later: the window's end
        (timedelta(days=2, hours=23) + SECOND, 0.0, False),
    ],
)
def test_window_penalty_at_each_boundary_across_spring_forward(offset, multiplier, accepted):
    lateness = assess(WINDOW, due=DUE_BEFORE_SPRING, submitted=DUE_BEFORE_SPRING + offset, zone=NEW_YORK)
    assert lateness.multiplier == pytest.approx(multiplier) and lateness.accepted is accepted


def test_hard_deadline_one_second_either_side():
    hard = LatePolicy()
    due = datetime(2027, 3, 21, 23, 59, tzinfo=SHANGHAI).astimezone(UTC)
    assert assess(hard, due=due, submitted=due - SECOND, zone=SHANGHAI).accepted
    assert assess(hard, due=due, submitted=due, zone=SHANGHAI).accepted
    late = assess(hard, due=due, submitted=due + SECOND, zone=SHANGHAI)
    assert not late.accepted and late.multiplier == 0 and late.describe() == "1 day late: too late to count"
    assert accepting_until(hard, due=due, zone=SHANGHAI) == due


def test_hourly_penalties_count_started_elapsed_hours():
    hourly = LatePolicy(kind="window", per="hour", penalty_percent=5, max_units=10)
    assert assess(
        hourly, due=DUE_BEFORE_SPRING, submitted=DUE_BEFORE_SPRING + SECOND, zone=NEW_YORK
    ).multiplier == (pytest.approx(0.95))
    at_hour = assess(
        hourly, due=DUE_BEFORE_SPRING, submitted=DUE_BEFORE_SPRING + timedelta(hours=1), zone=NEW_YORK
    )
    past_hour = assess(
        hourly,
        due=DUE_BEFORE_SPRING,
        submitted=DUE_BEFORE_SPRING + timedelta(hours=1) + SECOND,
        zone=NEW_YORK,
    )
    assert at_hour.units_late == 1 and past_hour.units_late == 2
    # Hours are elapsed time: the missing local hour of the DST night is not charged twice or skipped.
    assert accepting_until(hourly, due=DUE_BEFORE_SPRING, zone=NEW_YORK) == DUE_BEFORE_SPRING + timedelta(
        hours=10
    )


def test_late_days_are_spent_only_while_the_student_has_them():
    policy = LatePolicy(kind="late_days", max_units=2)
    two_days = DUE_BEFORE_SPRING + timedelta(hours=23) + SECOND
    used = assess(policy, due=DUE_BEFORE_SPRING, submitted=two_days, zone=NEW_YORK, late_days_left=3)
    assert (used.accepted, used.multiplier, used.late_days_used) == (True, 1.0, 2)
    short = assess(policy, due=DUE_BEFORE_SPRING, submitted=two_days, zone=NEW_YORK, late_days_left=1)
    assert not short.accepted and short.late_days_used == 0
    capped = assess(
        policy,
        due=DUE_BEFORE_SPRING,
        submitted=DUE_BEFORE_SPRING + timedelta(days=2, hours=23) + SECOND,
        zone=NEW_YORK,
        late_days_left=10,
    )
    assert not capped.accepted  # three days late, but at most two on this assignment


def test_an_extension_moves_the_deadline_and_the_window_with_it():
    extended = DUE_BEFORE_SPRING + timedelta(days=2)
    just_after_original = DUE_BEFORE_SPRING + SECOND
    assert assess(WINDOW, due=extended, submitted=just_after_original, zone=NEW_YORK).multiplier == 1.0
    assert assess(
        WINDOW, due=extended, submitted=extended + SECOND, zone=NEW_YORK
    ).multiplier == pytest.approx(0.9)
    assert accepting_until(WINDOW, due=extended, zone=NEW_YORK) > accepting_until(
        WINDOW, due=DUE_BEFORE_SPRING, zone=NEW_YORK
    )


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({"kind": "lenient"}, "kind must be one of"),
        ({"kind": "window", "per": "week", "penalty_percent": 5, "max_units": 2}, "per must be"),
        ({"kind": "window", "per": "day", "penalty_percent": 150, "max_units": 2}, "penalty_percent"),
        ({"kind": "window", "per": "day", "penalty_percent": 10}, "max_units is required"),
        ({"kind": "late_days", "max_units": -1}, "max_units must be a whole number"),
        ({"kind": "hard", "penalty_percent": 10}, "is not a field of a 'hard' policy"),
        ("hard", "must be an object"),
    ],
)
def test_invalid_policies_are_refused_with_the_field_named(raw, complaint):
    with pytest.raises(PolicyError, match=complaint):
        parse_policy(raw)


def test_policies_round_trip_through_json():
    for policy in (LatePolicy(), WINDOW, LatePolicy(kind="late_days", max_units=None)):
        assert parse_policy(policy.to_json()) == policy
