"""The alert budget: how many cards investigators review a day, as a count or a share of the day's cards.

A fixed count does not scale with the portfolio: 100 cards a day is about 9 % of the demo's 1,000 cards, but
a small share of a bank's. A share of the day's active cards (cards with at least one transaction that day)
keeps the alert rate the same at any size. The budget sets the decision threshold (the trainer picks it on
the validation days) and the k of the backtest's card precision.

Standard library only: ``jobs.platform.settings`` validates the setting with ``AlertBudget.parse``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_ALERT_BUDGET = "1%"
"""1 % of the day's active cards: about 10 cards a day in the demo (1,000 cards), 50 at handbook size."""
BUDGET_FORM = (
    "cards a day as a whole number ≥ 1 (e.g. 100), or a share of the day's active cards as a percentage "
    "above 0 and at most 100 (e.g. 1%)"
)


class BudgetError(ValueError):
    """A budget that is neither a whole number of cards ≥ 1 nor a percentage in (0, 100]."""


@dataclass(frozen=True)
class AlertBudget:
    """Exactly one of ``cards_per_day`` and ``share`` (of the day's active cards, 0 < share ≤ 1)."""

    cards_per_day: int | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        if (self.cards_per_day is None) == (self.share is None):
            raise BudgetError("an alert budget is either cards a day or a share of the day's cards, not both")
        if self.cards_per_day is not None and self.cards_per_day < 1:
            raise BudgetError(f"{self.cards_per_day} cards a day: the budget needs at least 1")
        if self.share is not None and not 0 < self.share <= 1:
            raise BudgetError(f"share {self.share}: expected above 0 and at most 1")

    @classmethod
    def parse(cls, text: str) -> AlertBudget:
        """``"100"`` is 100 cards a day, ``"1%"`` or ``"0.5 %"`` a share of the day's active cards."""
        value = text.strip()
        try:
            if value.endswith("%"):
                percent = float(value.removesuffix("%").strip())
                if not math.isfinite(percent):
                    raise ValueError
                return cls(share=percent / 100)
            if not value.isdigit():
                raise ValueError
            return cls(cards_per_day=int(value))
        except ValueError:
            raise BudgetError(f"{text!r} is not {BUDGET_FORM}") from None

    def cards_on(self, active_cards: int) -> int:
        """The cards allowed on a day with ``active_cards`` cards (a share rounds up, to at least 1)."""
        if self.cards_per_day is not None:
            return self.cards_per_day
        return max(1, math.ceil(self.share * active_cards)) if active_cards else 0

    def __str__(self) -> str:
        if self.cards_per_day is not None:
            return f"{self.cards_per_day} cards a day"
        return f"{self.share * 100:g}% of the day's active cards"
