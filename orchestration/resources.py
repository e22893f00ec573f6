"""The ``settings`` resource that hands ``jobs/`` its settings, generated from ``jobs.platform.settings``.

Its fields are the settings whose scope is ``run``, built from ``Settings.model_fields`` so that a setting
added there reaches the launchpad without a second declaration. Nothing here reads the environment at import.
"""

from __future__ import annotations

import types
import typing

import dagster as dg
from pydantic import Field, create_model

from jobs.platform.settings import Settings, fields_in_scope, load_settings, variable

_DOC = """Where txguard's data lives and which compute it uses, per run.

Each field left empty falls back to its ``TXGUARD_*`` environment variable, read when a run starts, so a
deployment sets variables (or ``EnvVar`` values in the launchpad) and the code location still loads with none
set. Settings of the process (the S3 endpoint, the Spark driver's memory, the sensors' pace) and secrets are
not fields: a run cannot change them, and a secret must never enter run config or the event log.
"""


def _config_type(annotation: object) -> object:
    """A setting's type as a resource field: numbers stay numbers, the rest is text (Dagster config has no
    ``Path`` or ``Literal``), and every field may be left empty."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = [
        m for m in (typing.get_args(annotation) if union else (annotation,)) if m is not types.NoneType
    ]
    kind = members[0] if len(members) == 1 and members[0] in (int, float, bool) else str
    return kind | None


class _SettingsResource(dg.ConfigurableResource):
    def load(self) -> Settings:
        """The run's settings: each field set here, the environment for the rest, all of them validated."""
        return load_settings(**{name: getattr(self, name) for name in fields_in_scope("run")})


TxguardSettings = create_model(
    "TxguardSettings",
    __base__=_SettingsResource,
    __module__=__name__,
    __doc__=_DOC,
    **{
        name: (
            _config_type(info.annotation),
            Field(default=None, description=f"{variable(name)}: {info.description}"),
        )
        for name, info in fields_in_scope("run").items()
    },
)
