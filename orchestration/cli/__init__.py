"""The ``txguard`` command: people's hands on the pipeline, the registry, the scores and the audit trail.

Each sub-command lives in its own module and imports its heavy dependencies only when it runs.
"""

from __future__ import annotations

import click

from orchestration.cli import analyst, demo, lineage, models, pipeline, simulate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """txguard: batch fraud scoring for card transactions."""


for command in (
    *simulate.commands,
    *pipeline.commands,
    *demo.commands,
    *lineage.commands,
    *analyst.commands,
    *models.commands,
):
    main.add_command(command)
