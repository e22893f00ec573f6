"""A headless run that stops on Ctrl-C or SIGTERM at any point and never waits silently on a dead run's slot.

Dagster turns SIGINT (and SIGTERM, which it maps to SIGINT while a run executes) into an interruption only
inside a step's code: dbt and the Spark job then get SIGINT, the step fails and the run is marked failed. A
run that waits for a pool slot runs no step code, so Dagster only notes the signal and keeps waiting.
``RunGuard`` watches from a thread. It sees every SIGINT and SIGTERM through ``signal.set_wakeup_fd``,
whichever handler is installed, and when the run does not stop by itself (it waits for a slot, or the grace
period is over, or a second signal came) it stops the process's children, marks the run failed, frees its
slots and exits. While the run waits for a slot it reaps dead holders, and says which run holds the slot,
since when, in which process, and how to free it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import dagster as dg

from orchestration.processes import descendants, stop_processes
from orchestration.recovery import reap_dead_runs, slot_holders

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 30.0
"""How long step code may take to stop after a signal (dbt and Pipes forward it to their child) before the
guard stops the run itself."""
SLOT_WAIT_GRACE_S = 1.0
"""A run that waits for a slot has no step code to interrupt: the guard stops it this soon after a signal."""
CHILD_GRACE_S = 5.0
POLL_S = 0.5
SLOT_POLL_S = 2.0
REPEAT_S = 60.0
"""While the holder of a slot does not change, its description is repeated this often."""


def tell(message: str) -> None:
    """Print a line for the person at the terminal, apart from the run's own output."""
    print(f"txguard: {message}", file=sys.stderr, flush=True)


def free_run_slots(instance: dg.DagsterInstance, run_id: str) -> None:
    """Free every slot the run holds or waits for: once it has stopped, any it still has is a leak (Dagster
    does not free the slot of a step that an interruption ended)."""
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


class RunGuard:
    """Watches one in-process run of this process from a thread; a context manager around its execution."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        run_id: str,
        dbt_targets: Path | None,
        notify: Callable[[str], None] = tell,
    ) -> None:
        self.instance = instance
        self.run_id = run_id
        self.dbt_targets = dbt_targets
        self.notify = notify
        self.signal: signal.Signals | None = None
        self._signals = 0
        self._first_signal_at = 0.0
        self._waiting = False
        self._reported: tuple[tuple[str, str, str | None], ...] = ()
        self._reported_at = 0.0
        self._last_error = ""
        self._done = threading.Event()
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._previous_wakeup_fd = -1
        self._previous_sigterm: Callable | int | None = None
        self._watch_slots = (
            not instance.is_ephemeral and instance.event_log_storage.supports_global_concurrency_limits
        )
        self._thread = threading.Thread(target=self._watch, name="txguard-run-guard", daemon=True)

    def __enter__(self) -> RunGuard:
        if threading.current_thread() is threading.main_thread():
            self._reader, self._writer = socket.socketpair()
            self._reader.setblocking(False)
            self._writer.setblocking(False)
            self._previous_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
            self._previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()
        if self._reader is not None and self._writer is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._reader.close()
            self._writer.close()

    def _watch(self) -> None:
        next_slot_check = time.monotonic()
        while not self._done.is_set():
            self._receive_signals()
            if self.signal is not None and self._must_stop_now():
                self._stop_now()
            if self._watch_slots and time.monotonic() >= next_slot_check:
                try:
                    self._check_slots()
                except Exception as error:
                    if str(error) != self._last_error:
                        self.notify(f"could not check the pool slots of run {self.run_id}: {error}")
                    self._last_error = str(error)
                next_slot_check = time.monotonic() + SLOT_POLL_S

    def _receive_signals(self) -> None:
        if self._reader is None:
            self._done.wait(POLL_S)
            return
        readable, _, _ = select.select([self._reader], [], [], POLL_S)
        if not readable:
            return
        with contextlib.suppress(BlockingIOError):
            for number in self._reader.recv(64):
                if number in STOP_SIGNALS:
                    self._signals += 1
                    if self.signal is None:
                        self.signal = signal.Signals(number)
                        self._first_signal_at = time.monotonic()

    def _must_stop_now(self) -> bool:
        waited = time.monotonic() - self._first_signal_at
        return self._signals >= 2 or waited >= GRACE_S or (self._waiting and waited >= SLOT_WAIT_GRACE_S)

    def _check_slots(self) -> None:
        holders = slot_holders(self.instance, self.run_id)
        self._waiting = bool(holders)
        if not holders:
            self._reported = ()
            return
        if any(holder.dead for holder in holders):
            for done in reap_dead_runs(self.instance, self.dbt_targets):
                self.notify(done.describe())
            return
        key = tuple(sorted((holder.pool, holder.run_id, holder.step_key) for holder in holders))
        if key == self._reported and time.monotonic() - self._reported_at < REPEAT_S:
            return
        self._reported, self._reported_at = key, time.monotonic()
        for holder in holders:
            self.notify(holder.describe())
        run = self.instance.get_run_by_id(self.run_id)
        if run is not None:
            self.instance.report_engine_event("\n".join(h.describe() for h in holders), run)

    def _stop_now(self) -> None:
        """Stop the children, fail the run, free its slots and exit: Dagster would not stop it in time.

        Said first: Dagster's log capture copies this process's output through a child process, which is
        stopped with the others.
        """
        assert self.signal is not None
        name = self.signal.name
        self.notify(
            f"{name}: stopping run {self.run_id}: its child processes, then the run (marked failed, its "
            "slots freed)"
        )
        stop_processes(descendants(os.getpid()), CHILD_GRACE_S)
        run = self.instance.get_run_by_id(self.run_id)
        if run is not None and not run.is_finished:
            self.instance.report_run_failed(
                run, f"Stopped by {name}: txguard ended its child processes and freed its pool slots."
            )
        free_run_slots(self.instance, self.run_id)
        os._exit(128 + self.signal)
