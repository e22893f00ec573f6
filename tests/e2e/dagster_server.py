"""What the browser and daemon tests share about a Dagster server they start: its GraphQL API, whether the
``txguard`` location loaded, and stopping its whole process group. The port comes from
``tests.support.free_port``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

LOCATION = "txguard"
LOCATION_STATUS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
UNREACHABLE = (urllib.error.URLError, ConnectionError, TimeoutError)
"""What a request to a server that is still starting (or already gone) raises."""


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    """POST one GraphQL query to the webserver and return its ``data``; errors fail the test."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{base}/graphql", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


def location_loaded(base: str) -> bool:
    """True once the ``txguard`` location is loaded; a location that failed to load fails the test."""
    try:
        workspace = graphql(base, LOCATION_STATUS)["workspaceOrError"]
    except UNREACHABLE:
        return False
    for entry in workspace.get("locationEntries", []):
        if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"]
            assert loaded["__typename"] == "RepositoryLocation", f"the code location failed to load: {loaded}"
            return True
    return False


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (CLI, webserver, daemon, code servers, runs), then SIGKILL
    what is left."""
    for sig, grace_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
