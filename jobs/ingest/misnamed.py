"""Landing entries whose name maps to no partition, set aside under ``quarantine/misnamed`` with the reason.

A regular file's bytes are copied there with a record of its name and why (rule ``misnamed``). An entry that
is not a regular file (a link, a FIFO, a device) is recorded by name with its rule (``symlink`` or
``not_a_regular_file``) and no content: nothing of it, or of a link's target, is read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable

from jobs.ingest.boundary import NotARegularFile, read_regular_file
from jobs.ingest.landing import LandingFile
from jobs.platform.layout import QUARANTINE
from jobs.platform.storage import filesystem, join

MISNAMED = f"{QUARANTINE}/misnamed"


def quarantine_misnamed(
    files: Iterable[tuple[LandingFile, str]], lake: str, run_id: str, now: dt.datetime | None = None
) -> list[dict[str, object]]:
    """Copy each badly named file's bytes under ``quarantine/misnamed`` with a record of its name and why.

    The folder is a digest of the file's fingerprint, never its name, so a hostile name cannot steer the
    write; the same version quarantined twice lands in the same place.
    """
    now = now or dt.datetime.now(dt.UTC)
    records = []
    for file, reason in files:
        folder = join(lake, MISNAMED, file.source, hashlib.sha256(file.fingerprint.encode()).hexdigest()[:16])
        try:
            content: bytes | None = read_regular_file(file.landing, file.key)
            rule = "misnamed"
        except NotARegularFile as refused:
            content, rule, reason = None, refused.rule, f"{reason}; {refused}"
        record = {
            "source": file.source,
            "name": file.name,
            "uri": file.uri,
            "size": file.size,
            "version": file.version,
            "reason": reason,
            "rule": rule,
            "content": None if content is None else join(folder, "content"),
            "content_sha256": None if content is None else hashlib.sha256(content).hexdigest(),
            "ingest_run_id": run_id,
            "quarantined_at": now.isoformat(),
        }
        fs, path = filesystem(folder)
        fs.makedirs(path, exist_ok=True)
        if content is not None:
            fs.pipe_file(f"{path}/content", content)
        fs.pipe_file(f"{path}/record.json", json.dumps(record, indent=2).encode())
        records.append(record)
    return records
