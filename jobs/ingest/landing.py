"""The landing zone: which files producers dropped, which day each one is, and a fingerprint of its version.

A landing file is ``<landing>/<source>/YYYY-MM-DD.csv`` or ``.parquet`` and nothing else: the name is the
partition, so a name that is not exactly a valid date (a nested path, ``..``, spaces, odd characters, an
upper-case extension, a date before the first partition) never maps to a partition. The fingerprint is the
path plus the size and the ETag (S3) or modification time (local): a corrected re-delivery is a new version.
An upload still in progress (a dot-file, or a ``.part``/``.tmp``-style name) is not a landing file until it
is renamed. Entries that are not regular files (links, folders named like a file, FIFOs) are listed with
their kind, never read: jobs/ingest/boundary.py decides what may be opened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from jobs.ingest.boundary import DIRECTORY, FILE, entry_kind, info_kind
from jobs.platform.layout import LANDING_SOURCES
from jobs.platform.storage import filesystem, join

FORMATS = ("csv", "parquet")

_NAME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})\.(csv|parquet)")

UPLOAD_SUFFIXES = (
    ".part",
    ".partial",
    ".tmp",
    ".temp",
    ".crdownload",
    ".download",
    ".filepart",
    ".uploading",
)
"""Names that uploaders, browsers and transfer tools give a file until it is complete (then rename it)."""


class BadLandingName(ValueError):
    """A landing file whose name does not map to a partition; the message says why."""


class BadLandingFolder(ValueError):
    """A source folder of the landing zone that is not a real folder (a link is never followed)."""


def is_upload_in_progress(name: str) -> bool:
    """A dot-file (or one in a dot-folder) or a partial-upload suffix: not a landing file until renamed.

    A name starting with ``..`` is not hidden but a traversal attempt, and stays a bad name.
    """
    hidden = any(part.startswith(".") and not part.startswith("..") for part in name.split("/"))
    return hidden or name.lower().endswith(UPLOAD_SUFFIXES)


@dataclass(frozen=True)
class LandingFile:
    """One object in a landing folder, as listed (no extra request per file)."""

    source: str
    name: str
    uri: str
    size: int
    version: str
    kind: str = FILE
    """``file`` for a regular file; ``symlink``, ``directory``, ``fifo``… for entries that are never read."""

    @property
    def fingerprint(self) -> str:
        """Path, size and ETag or mtime: the sensor's run key for this version of the file."""
        return f"{self.uri}:{self.size}:{self.version}"

    @property
    def key(self) -> str:
        """The file's place in the landing zone, relative to its root (the cursor's key)."""
        return f"{self.source}/{self.name}"

    @property
    def landing(self) -> str:
        """The landing root the file was listed under: its uri less its key."""
        return self.uri.removesuffix(f"/{self.key}")

    @property
    def in_progress(self) -> bool:
        return is_upload_in_progress(self.name)


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


def day_keys(landing: str, source: str, day: dt.date) -> list[str]:
    """The entries present for one day of one source (CSV first, then Parquet), as ``source/name`` keys.

    Whatever they are: a link or a folder in a landing file's place is found here and refused when read,
    never taken for a missing file.
    """
    keys = [f"{source}/{day.isoformat()}.{fmt}" for fmt in FORMATS]
    return [key for key in keys if entry_kind(landing, key) is not None]


def expected_uris(landing: str, source: str, day: dt.date) -> list[str]:
    """Where a producer is expected to drop one day's file, in every accepted format."""
    return [join(landing, source, f"{day.isoformat()}.{fmt}") for fmt in FORMATS]


def list_landing(landing: str, sources: Iterable[str] = LANDING_SOURCES) -> list[LandingFile]:
    """Every entry under each source folder, nested ones included, from one listing per folder.

    Links, FIFOs and other non-files are listed with their kind (and size 0: nothing of a link's target is
    looked at); folders are walked, not followed when they are links, and listed themselves only when named
    like a landing file, since that name stands for a day. ``BadLandingFolder`` when a source folder is a
    link or not a folder at all.
    """
    files: list[LandingFile] = []
    for source in sources:
        kind = entry_kind(landing, source)
        if kind is None:
            continue
        root = join(landing, source)
        if kind != DIRECTORY:
            raise BadLandingFolder(f"{root} is a {kind}, not a folder: landing links are never followed")
        fs, root_path = filesystem(root)
        root_path = root_path.rstrip("/")
        for path, info in sorted(fs.find(root_path, detail=True, withdirs=True).items()):
            if not path.startswith(root_path + "/") or path.endswith("/"):
                continue
            name = path[len(root_path) + 1 :]
            kind = info_kind(info)
            if kind == DIRECTORY and _NAME.fullmatch(name) is None:
                continue
            files.append(
                LandingFile(
                    source=source,
                    name=name,
                    uri=f"{root}/{name}",
                    size=int(info.get("size") or 0) if kind == FILE else 0,
                    version=_version(info),
                    kind=kind,
                )
            )
    return files


def fingerprints_by_day(landing: str, source: str, days: Iterable[dt.date]) -> dict[dt.date, list[str]]:
    """The fingerprint of every entry named for one of ``days`` of ``source``, from one listing, as the
    landing sensor computes it: recorded with a day's partition, it tells the sensor which versions the day
    was built from, however its run was started."""
    wanted = {day.isoformat() for day in days}
    found: dict[dt.date, list[str]] = {}
    for file in list_landing(landing, [source]):
        match = _NAME.fullmatch(file.name)
        if match is not None and match.group(1) in wanted:
            found.setdefault(dt.date.fromisoformat(match.group(1)), []).append(file.fingerprint)
    return found


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
    """What one sensor tick asks for: new or changed well-named entries, badly named ones, the new cursor.

    An entry named like a landing file goes to its day whatever its kind (a link or a folder there becomes
    that day's whole-file quarantine); uploads in progress are set apart and stay out of the cursor.
    """

    ingest: list[tuple[LandingFile, dt.date]]
    rejects: list[tuple[LandingFile, str]]
    waiting: list[LandingFile]
    cursor: str
    uploading: list[LandingFile] = field(default_factory=list)


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
    uploading: list[LandingFile] = []
    processed: dict[str, str] = {}
    for file in files:
        if file.in_progress:
            uploading.append(file)
            continue
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
    cursor_text = json.dumps(processed, separators=(",", ":"), sort_keys=True)
    return LandingPlan(ingest, rejects, waiting, cursor_text, uploading)


def misnamed_files(
    landing: str, first_day: dt.date, uris: Iterable[str] | None = None
) -> list[tuple[LandingFile, str]]:
    """Badly named entries now in the landing zone (only ``uris`` when given), each with the reason; uploads
    in progress are not landing files yet."""
    wanted = set(uris) if uris else None
    found = []
    for file in list_landing(landing):
        if file.in_progress or (wanted is not None and file.uri not in wanted):
            continue
        try:
            parse_landing_name(file.name, first_day)
        except BadLandingName as error:
            found.append((file, str(error)))
    return found
