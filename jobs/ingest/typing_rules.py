"""Raw values → contract types, and the ``wrong_type`` rule for a value that does not parse (or is empty).

Kinds are the contract's (jobs/ingest/contract.py): ``int64`` (a whole number, no decimals), ``timestamp``
(ISO-8601; naive read as UTC, offsets converted to UTC) and ``amount`` (a finite decimal number). Values
already typed by Parquet are checked rather than re-parsed, so a float id with a fraction is still wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jobs.ingest.reading import quarantine_frame

KIND_DTYPES = {"int64": "int64", "timestamp": "datetime64[ns, UTC]", "amount": "float64"}
_KIND_WORDS = {"int64": "a whole number", "timestamp": "an ISO-8601 timestamp", "amount": "a decimal number"}


def _parse_int64(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return pd.Series(pd.NA, index=values.index, dtype="Int64")
    if values.dtype == np.int64:
        return values
    if pd.api.types.is_integer_dtype(values):
        return values.astype("Int64")
    if pd.api.types.is_float_dtype(values):
        whole = np.isfinite(values) & (values == np.floor(values)) & (values.abs() < 2**63)
        return values.where(whole).astype("Int64")
    text = values.astype("string").str.strip()
    return text.where(text.str.fullmatch(r"[+-]?[0-9]{1,18}").fillna(False).astype(bool)).astype("Int64")


def _parse_timestamp(values: pd.Series) -> pd.Series:
    """UTC timestamps; naive values are read as UTC (the contract's zone), offsets converted to UTC."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        stamps = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values):
        stamps = values.dt.tz_localize("UTC")
    else:
        text = values.astype("string").str.strip()
        return pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601").astype("datetime64[ns, UTC]")
    low, high = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
    if not (stamps.min() >= low and stamps.max() <= high):
        stamps = stamps.where((stamps >= low) & (stamps <= high))
    return stamps.astype("datetime64[ns, UTC]")


def _parse_amount(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return pd.Series(np.nan, index=values.index)
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype("float64")
    else:
        text = values.astype("string").str.strip()
        numbers = pd.to_numeric(text.astype(object).where(text.notna(), None), errors="coerce")
    return numbers.where(np.isfinite(numbers.astype("float64")))


_PARSERS = {"int64": _parse_int64, "timestamp": _parse_timestamp, "amount": _parse_amount}


def typed_columns(rows: pd.DataFrame, columns: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Contract columns parsed to their types, and a ``wrong_type`` record for each row that did not parse."""
    parsed = {name: _PARSERS[kind](rows[name]) for name, kind in columns.items()}
    failed = {name: values.isna().to_numpy() for name, values in parsed.items()}
    bad = np.logical_or.reduce(list(failed.values()))
    reasons = []
    for position in np.flatnonzero(bad):
        parts = []
        for name in (name for name in columns if failed[name][position]):
            raw = rows[name].iat[position]
            empty = raw is None or (isinstance(raw, float) and np.isnan(raw)) or str(raw).strip() == ""
            parts.append(
                f"{name} is empty" if empty else f"{name}={raw!r} is not {_KIND_WORDS[columns[name]]}"
            )
        reasons.append((int(rows.index[position]), "wrong_type", "; ".join(parts), None))
    keep = ~bad
    typed = pd.DataFrame(
        {
            name: (parsed[name][keep] if bad.any() else parsed[name]).astype(KIND_DTYPES[kind])
            for name, kind in columns.items()
        },
        index=rows.index[keep],
    )
    return typed, quarantine_frame(reasons)
