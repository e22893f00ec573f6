"""Out-of-time plan: each day once, by the champion after its cutoff or by its block's as-of model."""

from __future__ import annotations

import datetime as dt

from jobs.training.asof import asof_cutoff, plan_out_of_time
from jobs.training.maturity import first_model_day

FIRST = dt.date(2018, 4, 1)


def days(first: str, last: str) -> list[dt.date]:
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def test_weekly_blocks_are_iso_weeks_scored_by_the_model_as_of_the_sunday_before() -> None:
    assert {asof_cutoff(day, 7) for day in days("2018-04-23", "2018-04-29")} == {dt.date(2018, 4, 22)}
    assert asof_cutoff(dt.date(2018, 4, 30), 7) == dt.date(2018, 4, 29)
    assert all(
        asof_cutoff(day, cadence) < day for day in days("2018-04-01", "2018-06-30") for cadence in (1, 7, 14)
    )


def test_every_day_is_planned_once_and_out_of_time() -> None:
    wanted = days("2018-04-01", "2018-06-10")
    plan = plan_out_of_time(wanted, dt.date(2018, 6, 3), FIRST, cadence_days=7)
    assert first_model_day(FIRST) == dt.date(2018, 4, 22)
    assert plan.champion_days == days("2018-06-04", "2018-06-10")
    assert list(plan.unscored) == days("2018-04-01", "2018-04-22")
    assert all("before the first out-of-time model" in why for why in plan.unscored.values())
    assert list(plan.asof_days) == [dt.date(2018, 4, 22) + dt.timedelta(weeks=k) for k in range(6)]
    assert all(cutoff < day for cutoff, block in plan.asof_days.items() for day in block)
    planned = [*plan.champion_days, *plan.unscored, *(d for block in plan.asof_days.values() for d in block)]
    assert sorted(planned) == wanted


def test_a_champion_without_a_recorded_cutoff_scores_nothing_and_a_longer_cadence_trains_fewer_models() -> (
    None
):
    plan = plan_out_of_time(days("2018-05-01", "2018-05-31"), None, FIRST, cadence_days=14)
    assert not plan.champion_days and len(plan.asof_days) == 3
    assert plan_out_of_time([FIRST], None, None, 7).unscored[FIRST].startswith("no feature partition")
