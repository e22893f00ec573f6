"""Out-of-time scoring: which model may score which day, so that no day is scored by a model that saw it.

A day D may be scored only by a model whose label cutoff (the instant up to which fraud reports labelled its
training data) is before D. The champion scores the days after its own cutoff, as the daily path always has.
Older days, the history a range run fills in, are scored by as-of models: one per block of
``cadence_days`` consecutive days, trained on the matured window ending the day before the block starts.
Blocks are counted from 0001-01-01, a Monday, so with the default cadence of 7 they are ISO weeks (a model
as of each Sunday scores the week after it), and the same day always maps to the same as-of model whatever
range it is scored in.

A day whose block starts before the first model can exist (the trainer's matured window does not fit in
the lake's history yet, ``jobs.training.maturity.first_model_day``) stays unscored, with that reason.

Pure functions over dates: the registry trains the models (``jobs.registry.asof``), scoring uses the plan.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobs.training.maturity import first_model_day


@dataclass(frozen=True)
class ScoringPlan:
    """Every day of a range, exactly once: scored by the champion, by an as-of model, or not at all."""

    champion_days: list[dt.date] = field(default_factory=list)
    asof_days: dict[dt.date, list[dt.date]] = field(default_factory=dict)
    """Days by the label cutoff of the as-of model that scores them, cutoffs in time order."""
    unscored: dict[dt.date, str] = field(default_factory=dict)
    """Days no model may score yet, with the reason."""


def asof_cutoff(day: dt.date, cadence_days: int) -> dt.date:
    """The label cutoff of the as-of model of ``day``'s block: the last day before the block starts."""
    block_start = day - dt.timedelta(days=(day.toordinal() - 1) % cadence_days)
    return block_start - dt.timedelta(days=1)


def plan_out_of_time(
    days: Sequence[dt.date],
    champion_cutoff: dt.date | None,
    first_feature_day: dt.date | None,
    cadence_days: int,
) -> ScoringPlan:
    """Assign each day to the champion (after its cutoff) or to its block's as-of model, or leave it unscored.

    ``champion_cutoff`` None (not recorded) gives the champion no day: it cannot be shown out of time.
    """
    plan = ScoringPlan()
    earliest = first_model_day(first_feature_day) if first_feature_day else None
    for day in sorted(days):
        if champion_cutoff is not None and day > champion_cutoff:
            plan.champion_days.append(day)
            continue
        cutoff = asof_cutoff(day, cadence_days)
        if earliest is None:
            plan.unscored[day] = "no feature partition in the lake: no model can be trained"
        elif cutoff < earliest:
            plan.unscored[day] = (
                f"before the first out-of-time model: its as-of model (one every {cadence_days} days) would "
                f"need labels up to {cutoff}, but a first model needs the lake's history from "
                f"{first_feature_day} through {earliest} (label delay, holdout, validation, a training day)"
            )
        else:
            plan.asof_days.setdefault(cutoff, []).append(day)
    return plan
