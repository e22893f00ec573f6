"""Which process owns a run and whether it still lives; children that die with the process that starts them.

A run killed by SIGKILL cannot say it is dead, so txguard asks the operating system. ``txguard run`` records
its own process in the run's tags (pid, host, and on Linux the boot and start tick of the process, so a pid
that was reused by another process is not taken for it); a run the daemon launched is owned by the process
that logged its ``RUN_START``, which must have started before that event.

The other half: a child started for a run (dbt, the Spark job) asks the kernel to SIGKILL it when its parent
dies (``PR_SET_PDEATHSIG``, kept across ``exec``), so a killed run leaves no child working on. The signal
fires when the parent *thread* that started the child ends; Dagster starts both from the step's thread. A
program that cannot bind itself is started through ``python -m orchestration.processes PROGRAM ARGS...``,
or through the file ``bound_launcher`` writes where a tool takes one path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs.platform.processes import die_with_parent

OWNER_PID_TAG = "txguard/owner_pid"
OWNER_HOST_TAG = "txguard/owner_host"
OWNER_PROCESS_TAG = "txguard/owner_process"
"""``<boot id>:<start tick>`` of the owning process on Linux: equal only for that very process."""

START_TOLERANCE_S = 2.0
"""``/proc/stat`` gives the boot time in whole seconds: a process started this long after an event counts
as started before it."""


@dataclass(frozen=True)
class ProcessOwner:
    """The process a run belongs to, as recorded; ``started_by`` bounds its start when no token was kept."""

    pid: int
    host: str
    token: str | None = None
    started_by: float | None = None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def this_host() -> str:
    return socket.gethostname()


@functools.cache
def _boot() -> tuple[str, float, int] | None:
    """This boot's id, its start (epoch seconds) and the clock ticks per second; None without ``/proc``."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path("/proc/stat").read_text().split("\n")
    except OSError:
        return None
    boot_time = next(float(line.split()[1]) for line in stat if line.startswith("btime "))
    return boot_id, boot_time, os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 first), None for no process or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields


def process_token(pid: int) -> str | None:
    """An identity of the live process ``pid`` that no later process will share, None if it is gone."""
    boot, fields = _boot(), _stat(pid)
    if boot is None or fields is None:
        return None
    return f"{boot[0]}:{fields[19]}"


def process_started_at(pid: int) -> float | None:
    """When the live process ``pid`` started (epoch seconds), None if it is gone or ``/proc`` is missing."""
    boot, fields = _boot(), _stat(pid)
    if boot is None or fields is None:
        return None
    return boot[1] + int(fields[19]) / boot[2]


def pid_exists(pid: int) -> bool:
    """Whether a process (not a zombie) has this pid; without ``/proc``, whether it can be signalled."""
    if _boot() is not None:
        return _stat(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_tags() -> dict[str, str]:
    """Run tags naming this process as the run's owner."""
    tags = {OWNER_PID_TAG: str(os.getpid()), OWNER_HOST_TAG: this_host()}
    token = process_token(os.getpid())
    if token:
        tags[OWNER_PROCESS_TAG] = token
    return tags


def owner_from_tags(tags: Mapping[str, str]) -> ProcessOwner | None:
    """The owner ``owner_tags`` recorded on a run, None for a run started another way."""
    pid, host = tags.get(OWNER_PID_TAG, ""), tags.get(OWNER_HOST_TAG)
    if not pid.isdigit() or not host:
        return None
    return ProcessOwner(pid=int(pid), host=host, token=tags.get(OWNER_PROCESS_TAG))


def owner_alive(owner: ProcessOwner) -> bool | None:
    """Whether the owner still runs; None when this machine cannot tell (it ran on another host)."""
    if owner.host != this_host():
        return None
    if owner.token is not None and _boot() is not None:
        return process_token(owner.pid) == owner.token
    if owner.started_by is not None:
        return process_started_before(owner.pid, owner.started_by)
    return pid_exists(owner.pid)


def process_started_before(pid: int, moment: float) -> bool:
    """Whether ``pid`` is alive and is the process that existed at ``moment`` (not a later reuse of it)."""
    started = process_started_at(pid)
    if started is None:
        return _boot() is None and pid_exists(pid)
    return started <= moment + START_TOLERANCE_S


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, children before grandchildren (Linux; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = _stat(int(entry.name))
                if fields is not None:
                    children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def stop_processes(pids: Iterable[int], grace_s: float) -> list[int]:
    """SIGTERM each process, SIGKILL those still alive after ``grace_s``; returns the pids that had to be
    killed."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_exists(pid) for pid in pids):
        time.sleep(0.1)
    killed = [pid for pid in pids if pid_exists(pid)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return killed


def started_at_text(moment: float | dt.datetime | None) -> str:
    """A moment as people read it in a terminal: UTC to the second."""
    if moment is None:
        return "an unknown time"
    when = moment if isinstance(moment, dt.datetime) else dt.datetime.fromtimestamp(moment, dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def exec_bound(argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` (its program looked up on ``PATH``), bound to die with this
    process's parent."""
    die_with_parent()
    os.execvp(argv[0], list(argv))


LAUNCHER = """#!{python}
# Generated by orchestration/processes.py: runs {target} so that it dies with the process that starts it.
import sys

from orchestration.processes import exec_bound

exec_bound([{target!r}, *sys.argv[1:]])
"""


def bound_launcher(executable: str, folder: Path) -> str:
    """An executable file in ``folder`` that runs ``executable`` bound to its parent, for tools that take
    one path to a program (``DbtCliResource(dbt_executable=...)``).

    Generated rather than kept in the repository because its first line must name this interpreter. A
    folder that cannot be written gives ``executable`` itself, with a warning: the child then outlives a
    killed parent.
    """
    executable = shutil.which(executable) or executable
    text = LAUNCHER.format(python=sys.executable, target=executable)
    path = folder / f"{Path(executable).name}-bound-to-parent"
    try:
        if not path.exists() or path.read_text() != text:
            folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
            with os.fdopen(handle, "w") as file:
                file.write(text)
            os.chmod(temporary, 0o755)
            os.replace(temporary, path)
    except OSError as error:
        warnings.warn(f"{executable} runs unbound to its parent: cannot write {path}: {error}", stacklevel=2)
        return executable
    return str(path)


if __name__ == "__main__":
    exec_bound(sys.argv[1:])
