"""The landing root as a trust boundary: what an entry below it is, and a regular file's bytes, nothing else.

Producers control everything below the landing root, so an entry is looked at, never through: a symbolic
link is not followed (anywhere on its path, the source folder included), and a directory, FIFO, device or
socket is never opened (opening a FIFO blocks, a device can act on open). Local paths are resolved one
component at a time from the root with ``O_NOFOLLOW``, and the file opened is checked again with ``fstat``,
so an entry swapped for a link after it was listed is still refused. On S3 there are no links; a key prefix
(or a ``name/`` marker) is a directory, and the same ``kind`` rules decide.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from fsspec.implementations.local import LocalFileSystem

from jobs.platform.storage import filesystem, join

FILE = "file"
SYMLINK = "symlink"
DIRECTORY = "directory"

_WORDS = {
    SYMLINK: "a symbolic link",
    DIRECTORY: "a directory",
    "fifo": "a FIFO (named pipe)",
    "socket": "a socket",
    "char_device": "a character device",
    "block_device": "a block device",
    "other": "not a regular file",
}
_MODES = {
    stat.S_IFREG: FILE,
    stat.S_IFLNK: SYMLINK,
    stat.S_IFDIR: DIRECTORY,
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char_device",
    stat.S_IFBLK: "block_device",
}
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotARegularFile(OSError):
    """An entry where a landing file should be that is not one; ``rule`` is its quarantine rule."""

    def __init__(self, key: str, kind: str, where: str = "") -> None:
        self.key, self.kind = key, kind
        self.rule = "symlink" if kind == SYMLINK else "not_a_regular_file"
        place = f"{where} (on the path of {key})" if where else key
        action = "links are never followed" if kind == SYMLINK else "it was never opened"
        super().__init__(f"{place} is {_WORDS.get(kind, _WORDS['other'])}, not a regular file: {action}")


def mode_kind(mode: int) -> str:
    """``file``, ``symlink``, ``directory``, ``fifo``, ``socket``, ``char_device`` or ``block_device``."""
    return _MODES.get(stat.S_IFMT(mode), "other")


def info_kind(info: dict) -> str:
    """The kind of a listed entry from its fsspec details (a local listing does not follow links)."""
    if info.get("islink"):
        return SYMLINK
    if "mode" in info and info.get("type") == "other":
        return mode_kind(int(info["mode"]))
    return {"file": FILE, "directory": DIRECTORY}.get(str(info.get("type")), "other")


def _is_local(fs: object) -> bool:
    return isinstance(fs, LocalFileSystem)


@contextmanager
def _parent_fd(root: str, key: str) -> Iterator[tuple[int, str]]:
    """A descriptor of ``key``'s folder, reached from ``root`` without following a link, and its last name."""
    *folders, name = parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise FileNotFoundError(errno.ENOENT, "not a place below the landing root", key)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for position, folder in enumerate(folders):
            try:
                inner = os.open(folder, os.O_DIRECTORY | _OPEN_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                kind = mode_kind(os.stat(folder, dir_fd=fd, follow_symlinks=False).st_mode)
                if kind == FILE:
                    raise FileNotFoundError(errno.ENOENT, "a file where a folder should be", key) from None
                raise NotARegularFile(key, kind, "/".join(folders[: position + 1])) from None
            os.close(fd)
            fd = inner
        yield fd, name
    finally:
        os.close(fd)


def entry_kind(landing: str, key: str) -> str | None:
    """What ``key`` (``source/name``) is below the landing root, never following a link; None when absent."""
    fs, root = filesystem(landing)
    if not _is_local(fs):
        try:
            return info_kind(fs.info(join(root, key)))
        except FileNotFoundError:
            return None
    try:
        with _parent_fd(root, key) as (fd, name):
            return mode_kind(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except NotARegularFile as error:
        return error.kind
    except FileNotFoundError:
        return None


def read_regular_file(landing: str, key: str) -> bytes:
    """The bytes of ``key`` below the landing root if it is a regular file; ``NotARegularFile`` otherwise."""
    fs, root = filesystem(landing)
    if not _is_local(fs):
        kind = entry_kind(landing, key)
        if kind is None:
            raise FileNotFoundError(errno.ENOENT, "no such landing file", key)
        if kind != FILE:
            raise NotARegularFile(key, kind)
        return fs.cat_file(join(root, key))
    with _parent_fd(root, key) as (folder, name):
        kind = mode_kind(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
        if kind != FILE:
            raise NotARegularFile(key, kind)
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=folder)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise NotARegularFile(key, SYMLINK) from None
            raise
        try:
            kind = mode_kind(os.fstat(fd).st_mode)
            if kind != FILE:
                raise NotARegularFile(key, kind)
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return handle.read()
        finally:
            os.close(fd)
