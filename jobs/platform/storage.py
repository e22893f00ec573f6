"""Paths and URIs for the lake and landing zone: local folders or ``s3://`` through s3fs, one code path."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import fsspec
from fsspec.core import url_to_fs

from jobs.platform.settings import load_settings

if TYPE_CHECKING:
    import pyarrow as pa


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the bare path for ``uri``; S3 listing caches are off so new files are seen.

    The S3 endpoint is a setting of the process (``Settings.s3_endpoint_url``); without one, botocore honours
    ``AWS_ENDPOINT_URL`` itself.
    """
    options: dict[str, object] = {}
    if uri.startswith("s3://"):
        options["use_listings_cache"] = False
        endpoint = load_settings().s3_endpoint_url
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    return url_to_fs(uri, **options)


def join(root: str, *parts: str) -> str:
    """Join path parts under a root that may be a URI."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def write_parquet_atomic(table: pa.Table, uri: str) -> None:
    """Write a Parquet file so that readers see the old file or the new one, never a partial one."""
    import pyarrow.parquet as pq

    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
        staging = f"{parent}/.{uuid.uuid4().hex}.tmp"
        with fs.open(staging, "wb") as handle:
            pq.write_table(table, handle)
        os.replace(staging, path)
        return
    with fs.open(path, "wb") as handle:
        pq.write_table(table, handle)


def read_parquet(uri: str) -> pa.Table:
    import pyarrow.parquet as pq

    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)
