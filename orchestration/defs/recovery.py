"""Recovery under the daemon: the sensor that reaps dead runs, so a crashed run never holds a slot for good.

Dagster's run monitoring (``dagster.yaml``) fails runs that never start or never finish canceling, but it
checks a started run's worker only through a launcher that reports its workers' health; the default launcher
of ``make ui`` does not, and a run worker killed by SIGKILL stays STARTED with its pool slots. Each tick runs
``orchestration.recovery.reap_dead_runs`` over every run of the instance, those of ``txguard run`` included.
"""

import dagster as dg

from orchestration.partitions import sensor_interval
from orchestration.recovery import dbt_targets, reap_dead_runs
from orchestration.resources import TxguardSettings


@dg.sensor(
    minimum_interval_seconds=sensor_interval(30),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="marks runs whose process is gone failed, kills their leftover step processes and frees "
    "their pool slots and dbt target folders; frees the slots finished runs still hold",
)
def dead_run_reaper(context: dg.SensorEvaluationContext, settings: TxguardSettings) -> dg.SkipReason:
    """Launches nothing: what it did is the tick's skip reason and a warning in the daemon's log."""
    reaped = reap_dead_runs(context.instance, dbt_targets(settings.load().home))
    for done in reaped:
        context.log.warning(done.describe())
    return dg.SkipReason("\n".join(done.describe() for done in reaped) or "no dead run")


defs = dg.Definitions(sensors=[dead_run_reaper])
