"""The feature set, declared once: training and scoring both use it, and its version is a hash of it.

A model is only ever scored with features of the version it was trained on (docs/architecture.md,
"Point-in-time rule").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30)
TERMINAL_DELAY_DAYS = 7
NIGHT_LAST_HOUR = 6
"""A transaction is at night when its UTC hour is at most this (the handbook's ``hour <= 6``)."""

HISTORY_DAYS = TERMINAL_DELAY_DAYS + max(WINDOWS_DAYS)
"""How many days before a partition a feature build must read: the widest window plus the delay."""

KEY_COLUMNS: tuple[str, ...] = ("transaction_id", "tx_datetime", "customer_id", "terminal_id")

FEATURE_COLUMNS: tuple[str, ...] = (
    "tx_amount",
    "tx_during_weekend",
    "tx_during_night",
    *(f"customer_id_nb_tx_{w}day_window" for w in WINDOWS_DAYS),
    *(f"customer_id_avg_amount_{w}day_window" for w in WINDOWS_DAYS),
    *(f"terminal_id_nb_tx_{w}day_window" for w in WINDOWS_DAYS),
    *(f"terminal_id_risk_{w}day_window" for w in WINDOWS_DAYS),
    *(f"customer_id_amount_ratio_{w}day_window" for w in WINDOWS_DAYS),
    *(f"terminal_id_nb_reported_frauds_{w}day_window" for w in WINDOWS_DAYS),
)
"""The handbook's 15 features, then two of ours (what they gain: README, "Design notes and departures"):

- the amount against the card's own habit: a stolen card's spending spree is a ratio that a tree would
  otherwise have to carve out of two columns;
- the terminal's frauds already reported, without the handbook's 7-day delay: chargebacks arrive within
  days, and a compromised terminal keeps taking frauds for weeks, so the first reports flag the rest."""

FORMULAS = {
    "tx_amount": "amount of the transaction",
    "tx_during_weekend": "1 when the UTC day is Saturday or Sunday",
    "tx_during_night": f"1 when the UTC hour <= {NIGHT_LAST_HOUR}",
    "customer_id_nb_tx_{w}day_window": "customer's transactions in (t - w days, t], current included",
    "customer_id_avg_amount_{w}day_window": "mean amount of those transactions",
    "terminal_id_nb_tx_{w}day_window": "terminal's transactions in [t - delay - w days, t - delay)",
    "terminal_id_risk_{w}day_window": "share of those with a fraud report reported_at <= t (0 when none)",
    "customer_id_amount_ratio_{w}day_window": "tx_amount / customer_id_avg_amount_{w}day_window (1 when 0)",
    "terminal_id_nb_reported_frauds_{w}day_window": "terminal's transactions in [t - w days, t) with a fraud "
    "report reported_at <= t",
}


def amount_ratio(amount: Any, average: Any) -> Any:
    """``amount / average``, 1.0 where the average is 0 (a card that only ever spent 0): arrays or scalars."""
    import numpy as np

    average = np.asarray(average, dtype=np.float64)
    safe = np.where(average > 0, average, 1.0)
    return np.where(average > 0, np.asarray(amount, dtype=np.float64) / safe, 1.0)


def _definition_document() -> str:
    return json.dumps(
        {
            "windows_days": WINDOWS_DAYS,
            "terminal_delay_days": TERMINAL_DELAY_DAYS,
            "night_last_hour": NIGHT_LAST_HOUR,
            "columns": FEATURE_COLUMNS,
            "formulas": FORMULAS,
        },
        sort_keys=True,
    )


FEATURE_SET_VERSION = "fs-" + hashlib.sha256(_definition_document().encode()).hexdigest()[:12]


class FeatureSetMismatch(ValueError):
    """A model and a feature table disagree on the feature-set version."""


def require_feature_set(expected: str, found: str, what: str) -> None:
    if expected != found:
        raise FeatureSetMismatch(
            f"{what}: feature-set version {found} does not match the expected version {expected}"
        )
