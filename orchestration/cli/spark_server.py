"""``txguard spark-server``, and the warm Spark that ``txguard ui`` keeps for the daemon's feature builds.

A Spark Connect server (it ships in the pyspark package) is one long-lived JVM; a feature job that connects
to it skips the JVM start and JIT warm-up that otherwise cost more than a day's features. The server uses the
same Java, master, driver memory and session settings as a local session (``jobs.platform.spark``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from jobs.platform.spark import DEFAULT_CONNECT_PORT, connect_server_reachable
from orchestration.cli.arguments import refuse

PORT = click.IntRange(1, 65535)


def connect_url(host: str, port: int) -> str:
    return f"sc://{host}:{port}"


def require_free_port(host: str, port: int, option: str) -> None:
    """Refuse a port that something already accepts on (another server would fail to bind it)."""
    from jobs.platform.settings import variable

    if connect_server_reachable(connect_url(host, port), timeout_s=1.0):
        raise refuse(
            f"port {port} on {host} is taken; if it is a Spark Connect server, use it with "
            f"{variable('spark_remote')}={connect_url(host, port)}, else choose another port",
            option,
        )


def server_command(host: str, port: int) -> list[str]:
    """The server's command line from the settings (master, driver memory); sets ``JAVA_HOME`` here."""
    from jobs.platform.settings import load_settings
    from jobs.platform.spark import connect_server_command

    settings = load_settings()
    return connect_server_command(settings.spark_master, host, port, settings.spark_driver_memory)


def start_bound_server(host: str, port: int, log: Path) -> subprocess.Popen:
    """A Connect server in the background, its output in ``log``, bound to die with this process (even when
    it is SIGKILLed: ``orchestration.processes``)."""
    command = server_command(host, port)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestration.processes", *command],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (Spark's shutdown hooks run), then SIGKILL if it lingers."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)


@click.command("spark-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="address the server binds to")
@click.option("--port", default=DEFAULT_CONNECT_PORT, show_default=True, type=PORT, help="its gRPC port")
def spark_server(host: str, port: int) -> None:
    """Run a warm Spark Connect server in the foreground (Ctrl-C stops it).

    Feature jobs use it when TXGUARD_SPARK_REMOTE is sc://HOST:PORT; `txguard ui` starts its own.
    """
    from jobs.platform.settings import variable

    require_free_port(host, port, "--port")
    command = server_command(host, port)
    url = connect_url(host, port)
    click.echo(f"Spark Connect server on {url}: jobs use it with {variable('spark_remote')}={url}", err=True)
    sys.stdout.flush()
    os.execv(command[0], command)


commands = [spark_server]
