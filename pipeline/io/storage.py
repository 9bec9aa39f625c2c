"""Storage for the offline pipeline: one filesystem helper, file identity, and writes that publish whole files.

Everything here works on local paths and on ``s3://`` URIs (any fsspec protocol, in fact). It knows
nothing of the model.

Filesystems
-----------
:func:`filesystem` is the single place a URI becomes ``(fs, path)``. S3 is configured the standard
way (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL`` for S3-compatible stores, all read by botocore), with
per-run overrides in ``storage_options``: friendly names ``endpoint_url``, ``region``, ``profile``,
``key``, ``secret``, ``token``, ``anon`` are mapped onto s3fs arguments, anything else is passed to
the fsspec filesystem unchanged (e.g. ``client_kwargs``). fsspec caches filesystem instances by
their arguments, so calling it per file is cheap; listings that must be fresh use ``refresh=True``.

File identity
-------------
:func:`content_key` names *this version* of a file (not its location; callers combine it with the
URI/video id and the model/config version, e.g. with :func:`make_key`):

* S3 (and other object stores): the ETag plus the size (and VersionId when the bucket is
  versioned). A single-part ETag is the MD5 of the bytes; a multipart ETag is not, and the same
  bytes uploaded with another part size get another ETag: that only causes a recompute, never a
  stale hit. Every re-upload of different bytes changes it.
* Local files: size + ``st_mtime_ns``. A rewrite changes the mtime; a tool that rewrites a file
  *and* restores its old mtime with the same size (``rsync -t`` of different bytes of equal length)
  would not be noticed. Hashing every video is not affordable at catalog scale.

:func:`stat_many` does the same for many URIs at once: one listing per directory when many files
share it (S3 ``ListObjectsV2`` returns sizes and ETags, 1000 per request), concurrent HEADs
otherwise, ``os.stat`` locally.

The Delta tables every stage writes are in :mod:`pipeline.io.table`; :func:`delta_storage_options`
gives them the same storage options in delta-rs' spelling.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

# friendly storage_options names -> s3fs arguments
_S3_ALIASES = {"profile": "profile", "key": "key", "secret": "secret", "token": "token", "anon": "anon"}


def _s3_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    client_kwargs = dict(opts.get("client_kwargs") or {})
    for k, v in opts.items():
        if k == "client_kwargs":
            continue
        if k == "endpoint_url":
            client_kwargs["endpoint_url"] = v
        elif k in ("region", "region_name"):
            client_kwargs["region_name"] = v
        elif k in ("access_key_id", "aws_access_key_id"):
            out["key"] = v
        elif k in ("secret_access_key", "aws_secret_access_key"):
            out["secret"] = v
        elif k in ("session_token", "aws_session_token"):
            out["token"] = v
        else:
            out[_S3_ALIASES.get(k, k)] = v
    if client_kwargs:
        out["client_kwargs"] = client_kwargs
    return out


def filesystem(uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``uri`` (local path, ``file://``, ``s3://``, any fsspec URL) -> ``(fs, path inside fs)``."""
    uri = os.fspath(uri)
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    opts = dict(storage_options or {})
    if protocol in ("s3", "s3a"):
        opts = _s3_options(opts)
        if protocol == "s3a":
            uri = "s3://" + uri.split("://", 1)[1]
    fs, path = fsspec.core.url_to_fs(uri, **opts)
    if protocol in ("s3", "s3a"):
        path = path.rstrip("/")
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of :func:`filesystem`: plain absolute path for local files, ``proto://...`` otherwise."""
    if is_local(fs):
        return path
    return fs.unstrip_protocol(path)


# --------------------------------------------------------------------------------------------------
# file identity


@dataclass(frozen=True)
class FileStat:
    uri: str
    size: int
    content_key: str
    error: str | None = None  # why the file exists but no version of it could be identified (size -1, key "")


def _local_key(path: str) -> tuple[int, str]:
    st = os.stat(path)
    return st.st_size, f"local:size={st.st_size}:mtime_ns={st.st_mtime_ns}"


def _remote_key(info: Mapping[str, Any]) -> str:
    size = info.get("size", info.get("Size"))
    etag = (info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("crc32c")
            or info.get("Content-MD5") or info.get("Digest"))
    parts = []
    if etag:
        parts.append(f"etag={str(etag).strip(chr(34))}")
    version = info.get("VersionId") or info.get("generation")
    if version:
        parts.append(f"version={version}")
    if not etag:  # no content hash offered by this backend: fall back to modification time
        mtime = (info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("last_modified")
                 or info.get("Last-Modified"))  # HTTP(S): the header, with the size below
        if mtime is None:
            raise ValueError(f"cannot identify a version of {info.get('name')!r}: the server sends no ETag, "
                             f"content hash or Last-Modified (it sent {', '.join(sorted(info))})")
        parts.append(f"mtime={mtime.isoformat() if hasattr(mtime, 'isoformat') else mtime}")
    parts.append(f"size={size}")
    return "obj:" + ":".join(parts)


def content_key(
    uri: str,
    info: Mapping[str, Any] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Identity of the current version of ``uri`` (see module docstring). ``info`` (an fsspec info
    dict, e.g. from a listing) avoids a request when already at hand; for local files it is ignored
    because fsspec's float mtime loses the nanoseconds."""
    fs, path = filesystem(uri, storage_options)
    if is_local(fs):
        return _local_key(path)[1]
    if info is None:
        fs.invalidate_cache(path)  # a listing cached earlier in this process may be stale
        info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(uri)
    return _remote_key(info)


def stat_many(
    uris: Iterable[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    list_threshold: int = 16,
) -> dict[str, FileStat | None]:
    """Size and :func:`content_key` of many files; ``None`` for files that do not exist, and a FileStat
    with ``error`` set for a file whose version cannot be identified or whose stat failed (one file
    never stops the others).

    Remote files are grouped by parent directory: a directory holding at least ``list_threshold``
    of the requested files is listed once (one request per 1000 objects on S3); the others get
    concurrent HEAD requests. One filesystem per protocol is used for the whole call.
    """
    uris = list(dict.fromkeys(uris))
    out: dict[str, FileStat | None] = {}
    by_dir: dict[tuple[int, str], list[tuple[str, str]]] = defaultdict(list)
    fss: dict[int, fsspec.AbstractFileSystem] = {}
    for uri in uris:
        fs, path = filesystem(uri, storage_options)
        if is_local(fs):
            try:
                size, key = _local_key(path)
                out[uri] = FileStat(uri, size, key)
            except (FileNotFoundError, NotADirectoryError):
                out[uri] = None
            except OSError as e:
                out[uri] = FileStat(uri, -1, "", error=f"cannot read the file's size and time: {e}")
            continue
        fss[id(fs)] = fs
        by_dir[(id(fs), posixpath.dirname(path))].append((uri, path))

    heads: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for (fs_id, parent), items in by_dir.items():
        fs = fss[fs_id]
        # HTTP has no directory listing to trust (404, 403 or an HTML page): always one HEAD per file.
        if len(items) < list_threshold or _protocols(fs) & {"http", "https"}:
            heads[fs_id].extend(items)
            continue
        try:
            listing = {e["name"].rstrip("/"): e for e in fs.ls(parent, detail=True, refresh=True)}
        except FileNotFoundError:
            listing = {}
        for uri, path in items:
            e = listing.get(path)
            if e is None or e.get("type") == "directory":
                out[uri] = None
            else:
                out[uri] = _stat(uri, e)

    for fs_id, items in heads.items():
        fs = fss[fs_id]
        if getattr(fs, "async_impl", False):
            from fsspec.asyn import _run_coros_in_chunks, sync

            infos = sync(
                fs.loop,
                _run_coros_in_chunks,
                [_fresh_info(fs, p) for _, p in items],
                batch_size=64,
                return_exceptions=True,
            )
        else:
            infos = []
            for _, p in items:
                try:
                    infos.append(fs.info(p))
                except Exception as e:  # noqa: BLE001 - collected and re-raised below
                    infos.append(e)
        for (uri, _), info in zip(items, infos):
            if isinstance(info, FileNotFoundError):
                out[uri] = None
            elif isinstance(info, Exception):
                out[uri] = FileStat(uri, -1, "", error=f"cannot stat the file: {type(info).__name__}: {info}")
            elif isinstance(info, BaseException):
                raise info
            elif info.get("type") == "directory":
                out[uri] = None
            else:
                out[uri] = _stat(uri, info)
    return {u: out[u] for u in uris}


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    p = fs.protocol
    return {p} if isinstance(p, str) else set(p)


def _stat(uri: str, info: Mapping[str, Any]) -> FileStat:
    try:
        return FileStat(uri, int(info["size"]), _remote_key(info))
    except (ValueError, KeyError, TypeError) as e:
        return FileStat(uri, -1, "", error=str(e))


async def _fresh_info(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    fs.invalidate_cache(path)
    return await fs._info(path)


def join_uri(root: str, *parts: str) -> str:
    """`root`/`part`/...: one separator rule for local paths and URIs (s3://bucket/prefix)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def make_key(*parts: Any) -> str:
    """A stable row key from parts (e.g. video uri, content_key, model version): 32 hex chars."""
    h = hashlib.sha256()
    for p in parts:
        b = str(p).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:32]


def write_bytes(uri: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Whole-object write of a published file (table, report): atomic locally (temp file + rename),
    a single PUT on object stores, so a reader never sees half of it."""
    fs, path = filesystem(uri, storage_options)
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{time.time_ns()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def delta_storage_options(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The project's storage options (pipeline/io/storage.py: ``endpoint_url``, ``region``, ``key``,
    ``secret``, ``token``, ``profile``, or s3fs' ``client_kwargs``) as delta-rs object-store options.

    On S3 commits use conditional writes (``conditional_put=etag``: If-None-Match on the next log
    version), which AWS S3, MinIO and moto support; a store without them needs delta-rs' DynamoDB
    locking (pass ``AWS_S3_LOCKING_PROVIDER`` and its table in `storage_options`). Options already in
    delta-rs' spelling (upper case, or ``conditional_put``) are passed unchanged. Credentials and
    endpoint otherwise come from the standard AWS environment variables, as for s3fs.
    """
    opts = dict(storage_options or {})
    if "://" not in uri or not uri.split("://", 1)[0].lower().startswith("s3"):
        return {k: str(v) for k, v in opts.items() if k.isupper()}
    names = {"endpoint_url": "AWS_ENDPOINT_URL", "region": "AWS_REGION", "region_name": "AWS_REGION",
             "key": "AWS_ACCESS_KEY_ID", "access_key_id": "AWS_ACCESS_KEY_ID", "aws_access_key_id": "AWS_ACCESS_KEY_ID",
             "secret": "AWS_SECRET_ACCESS_KEY", "secret_access_key": "AWS_SECRET_ACCESS_KEY",
             "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN",
             "session_token": "AWS_SESSION_TOKEN", "aws_session_token": "AWS_SESSION_TOKEN", "profile": "AWS_PROFILE"}
    out: dict[str, str] = {}
    client_kwargs = opts.pop("client_kwargs", None) or {}
    for k, v in {**{f"{k}": v for k, v in client_kwargs.items()}, **opts}.items():
        if k in names:
            out[names[k]] = str(v)
        elif k.isupper() or k == "conditional_put":
            out[k] = str(v)
    endpoint = out.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if endpoint.startswith("http://"):
        out.setdefault("AWS_ALLOW_HTTP", "true")
    if "AWS_REGION" not in out and not os.environ.get("AWS_REGION"):
        out["AWS_REGION"] = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    if "AWS_S3_LOCKING_PROVIDER" not in out:
        out.setdefault("conditional_put", "etag")
    return out
