"""Children that die with the process that starts them, so a killed run leaves no dbt or Spark work behind."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
"""prctl option: the signal this process gets when its parent dies."""


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; nothing elsewhere).

    The request survives ``exec``. If the parent died before it took effect, this process was already handed
    to another parent (pid 1 or a subreaper): it exits at once rather than run on orphaned.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if parent == 1 or os.getppid() != parent:
        os._exit(1)
