"""The landing zone: which files producers dropped, which day each one is, and a fingerprint of its version.

A landing file is ``<landing>/<source>/YYYY-MM-DD.csv`` or ``.parquet`` and nothing else: the name is the
partition, so a name that is not exactly a valid date (a nested path, ``..``, spaces, odd characters, an
upper-case extension, a date before the first partition) never maps to a partition. The fingerprint is the
path plus the size and the ETag (S3) or modification time (local): a corrected re-delivery is a new version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from jobs.platform.layout import LANDING_SOURCES
from jobs.platform.storage import filesystem, join

FORMATS = ("csv", "parquet")

_NAME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})\.(csv|parquet)")


class BadLandingName(ValueError):
    """A landing file whose name does not map to a partition; the message says why."""


@dataclass(frozen=True)
class LandingFile:
    """One object in a landing folder, as listed (no extra request per file)."""

    source: str
    name: str
    uri: str
    size: int
    version: str

    @property
    def fingerprint(self) -> str:
        """Path, size and ETag or mtime: the sensor's run key for this version of the file."""
        return f"{self.uri}:{self.size}:{self.version}"

    @property
    def key(self) -> str:
        """The file's place in the landing zone, relative to its root (the cursor's key)."""
        return f"{self.source}/{self.name}"


def parse_landing_name(name: str, first_day: dt.date | None = None) -> dt.date:
    """The partition day a landing file name stands for; ``BadLandingName`` with the reason otherwise."""
    match = _NAME.fullmatch(name)
    if match is None:
        if "/" in name or "\\" in name or ".." in name:
            raise BadLandingName(f"{name!r} is not a plain file name (nested path or traversal attempt)")
        if not name.isprintable() or not name.isascii():
            raise BadLandingName(f"{name!r} contains non-printable or non-ASCII characters")
        raise BadLandingName(f"{name!r} is not YYYY-MM-DD.csv or YYYY-MM-DD.parquet")
    try:
        day = dt.date.fromisoformat(match.group(1))
    except ValueError:
        raise BadLandingName(f"{name!r}: {match.group(1)} is not a calendar date") from None
    if first_day is not None and day < first_day:
        raise BadLandingName(f"{name!r}: {day} is before the first partition {first_day}")
    return day


def landing_uris(landing: str, source: str, day: dt.date) -> list[str]:
    """The landing files that exist for one day of one source (CSV first, then Parquet)."""
    found = []
    for uri in expected_uris(landing, source, day):
        fs, path = filesystem(uri)
        if fs.exists(path):
            found.append(uri)
    return found


def expected_uris(landing: str, source: str, day: dt.date) -> list[str]:
    """Where a producer is expected to drop one day's file, in every accepted format."""
    return [join(landing, source, f"{day.isoformat()}.{fmt}") for fmt in FORMATS]


def list_landing(landing: str, sources: Iterable[str] = LANDING_SOURCES) -> list[LandingFile]:
    """Every file under each source folder, nested ones included, from one listing per folder."""
    files: list[LandingFile] = []
    for source in sources:
        root = join(landing, source)
        fs, root_path = filesystem(root)
        root_path = root_path.rstrip("/")
        if not fs.exists(root_path):
            continue
        for path, info in sorted(fs.find(root_path, detail=True, withdirs=False).items()):
            if info.get("type", "file") != "file" or not path.startswith(root_path + "/"):
                continue
            name = path[len(root_path) + 1 :]
            files.append(
                LandingFile(
                    source=source,
                    name=name,
                    uri=join(root, name),
                    size=int(info.get("size") or 0),
                    version=_version(info),
                )
            )
    return files


def _version(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
    if isinstance(mtime, dt.datetime):
        return mtime.isoformat()
    return f"{float(mtime or 0):.6f}"


def _digest(file: LandingFile) -> str:
    return hashlib.blake2b(f"{file.size}:{file.version}".encode(), digest_size=6).hexdigest()


@dataclass(frozen=True)
class LandingPlan:
    """What one sensor tick asks for: new or changed well-named files, badly named ones, the new cursor."""

    ingest: list[tuple[LandingFile, dt.date]]
    rejects: list[tuple[LandingFile, str]]
    waiting: list[LandingFile]
    cursor: str


def plan_landing(
    files: Iterable[LandingFile], cursor: str | None, first_day: dt.date, last_day: dt.date
) -> LandingPlan:
    """Compare a listing with the cursor (``{key: digest of size and version}``) of files already handled.

    Files dated after ``last_day`` (a partition that does not exist yet) wait, outside the cursor, so they
    are requested once their day exists. Files no longer listed drop out of the cursor, which stays as small
    as the landing zone.
    """
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    ingest: list[tuple[LandingFile, dt.date]] = []
    rejects: list[tuple[LandingFile, str]] = []
    waiting: list[LandingFile] = []
    processed: dict[str, str] = {}
    for file in files:
        digest = _digest(file)
        day, reason = None, ""
        try:
            day = parse_landing_name(file.name, first_day)
        except BadLandingName as error:
            reason = str(error)
        if day is not None and day > last_day:
            waiting.append(file)
            continue
        processed[file.key] = digest
        if seen.get(file.key) == digest:
            continue
        if day is None:
            rejects.append((file, reason))
        else:
            ingest.append((file, day))
    ingest.sort(key=lambda item: (LANDING_SOURCES.index(item[0].source), item[1], item[0].name))
    return LandingPlan(ingest, rejects, waiting, json.dumps(processed, separators=(",", ":"), sort_keys=True))


def misnamed_files(
    landing: str, first_day: dt.date, uris: Iterable[str] | None = None
) -> list[tuple[LandingFile, str]]:
    """Badly named files now in the landing zone (only ``uris`` when given), each with the reason."""
    wanted = set(uris) if uris else None
    found = []
    for file in list_landing(landing):
        if wanted is not None and file.uri not in wanted:
            continue
        try:
            parse_landing_name(file.name, first_day)
        except BadLandingName as error:
            found.append((file, str(error)))
    return found
