"""Errors people cause, said in a line or two with the fix, instead of a traceback.

An error is recognised by its class name (anywhere in its class hierarchy, or in the cause chain of a
Dagster step failure read back from the instance), so the command line imports nothing heavy to recognise
one, and a failure inside a run reads the same as one raised in this process. Anything else is a bug and
keeps its traceback. ``txguard --debug`` shows the traceback of these too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DEBUG = "txguard.debug"
"""``ctx.meta`` key: set by ``txguard --debug``, read where a command would otherwise hide a traceback."""

FIXES: dict[str, str] = {
    "SettingsError": "correct or unset the variable; the README lists every setting and its form",
    "ModelIntegrityError": (
        "the model's artifact is not the one registered: restore it, or make another version champion "
        '(txguard promote --version N --reason "...")'
    ),
    "UnknownModelVersion": (
        "the registry has no such version: see them with `make mlflow`, or train and promote one first "
        "(txguard run over enough days)"
    ),
    "MissingLandingFile": "land the day's file (txguard simulate writes some), or choose days that have one",
    "MissingFeatures": "materialize the features of those days first: txguard run --from D --to D",
    "WarehouseBusy": "another process holds the warehouse; try again when its run has finished",
}

MAX_LINES = 2


def first_lines(message: str, limit: int = MAX_LINES) -> str:
    """The first ``limit`` non-empty lines of ``message``, each stripped; an ellipsis says more was cut."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    shown = " ".join(lines[:limit])
    return f"{shown} …" if len(lines) > limit else shown


def explain(class_names: Iterable[str], message: str) -> str | None:
    """The message and the fix of an error people cause, or None when the error is not one of them."""
    for name in class_names:
        if name in FIXES:
            return f"{first_lines(message)}\n  fix: {FIXES[name]}"
    return None


def explain_exception(error: BaseException) -> str | None:
    """``explain`` for an exception raised in this process."""
    return explain((cls.__name__ for cls in type(error).__mro__), str(error))


def strip_class_prefix(message: str, class_name: str) -> str:
    """A serialized error's message without the ``package.module.ClassName: `` that Python puts first."""
    return re.sub(rf"^\s*(?:[\w.]+\.)?{re.escape(class_name)}:\s*", "", message, count=1)
