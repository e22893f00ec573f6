"""``txguard promote``, ``rollback`` and ``evaluate``: people's hands on the model registry.

Every promotion and rollback is recorded on the model versions with who did it and why.
"""

from __future__ import annotations

import getpass
import os

import click


def _settings():
    from jobs.platform.settings import load_settings

    return load_settings()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:{os.environ.get('USER', 'unknown')}"


def _echo_record(record) -> None:
    click.echo(
        f"{record.action}: {record.name} champion v{record.previous_champion} -> v{record.champion_after}"
    )
    click.echo(f"  by {record.actor} at {record.decided_at}: {record.reason}")
    for name, value in sorted(record.metrics.items()):
        click.echo(f"  {name} = {value:.4f}")


@click.command()
@click.option("--version", "version", type=int, required=True, help="the model version to make @champion")
@click.option("--reason", required=True, help="why (recorded with the decision)")
def promote(version: int, reason: str) -> None:
    """Make a registered version the champion (bypasses the gate; recorded)."""
    from jobs.registry.client import RegistryError
    from jobs.registry.decision_records import record_decision
    from jobs.registry.promotion import promote as promote_version

    settings = _settings()
    try:
        record = promote_version(version, reason, _actor(), tracking_uri=settings.tracking_uri)
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    record_decision(settings, record, dagster_run_id=None)
    _echo_record(record)


@click.command()
@click.option("--reason", required=True, help="why (recorded with the decision)")
def rollback(reason: str) -> None:
    """Give @champion back to the version the current champion replaced."""
    from jobs.registry.client import RegistryError
    from jobs.registry.decision_records import record_decision
    from jobs.registry.promotion import rollback as rollback_champion

    settings = _settings()
    try:
        record = rollback_champion(reason, _actor(), tracking_uri=settings.tracking_uri)
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    record_decision(settings, record, dagster_run_id=None)
    _echo_record(record)


@click.command()
@click.option(
    "--protocol", type=click.Choice(["handbook", "production", "both"]), default="handbook", show_default=True
)
@click.option("--lake", default=None, help="lake root (path or s3://); default: the configured lake")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu", "cuda"]), default=None)
def evaluate(protocol: str, lake: str | None, device: str | None) -> None:
    """Train and test on the handbook's protocol and print the result next to the published table.

    Refuses, naming the missing report days, while the lake lacks the fraud reports of the reporting delay
    after the last test day: frauds still to be reported would count as genuine.
    """
    from jobs.training.evaluate import format_results, run_protocol
    from jobs.training.maturity import ImmatureLabels
    from jobs.training.trainer import DeviceUnavailable, TrainingDataError

    settings = _settings()
    protocols = ["handbook", "production"] if protocol == "both" else [protocol]
    try:
        results = [
            run_protocol(lake or settings.lake, p, device=device or settings.training_device)
            for p in protocols
        ]
    except (TrainingDataError, ImmatureLabels, DeviceUnavailable) as error:
        raise click.ClickException(str(error)) from None
    click.echo(format_results(results))


commands: list[click.Command] = [promote, rollback, evaluate]
