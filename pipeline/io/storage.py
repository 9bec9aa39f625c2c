"""Storage for the offline pipeline: one filesystem helper, file identity, and an idempotent shard store.

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

Shard store protocol (:class:`ShardStore`)
------------------------------------------
Layout under ``root``::

    data/<shard_id>.<attempt>.parquet   # written first; <attempt> is a fresh random token per try
    _manifests/<shard_id>.json          # written last, with exclusive create; names its data file

1. ``commit`` writes the whole Parquet file under a name no one else uses (the attempt token), then
   publishes ``_manifests/<shard_id>.json`` with exclusive create: ``If-None-Match: *`` on S3
   (s3fs ``open(path, "xb")``), and on local disks a fully written temporary file hard-linked into
   place (``link`` fails if the target exists, and the name appears with its complete content,
   which a plain ``open(path, "xb")`` would not guarantee if the writer were killed mid-write).
   The manifest holds the row count, the keys, the data file name, its size, and the creation time.
2. Readers only list ``_manifests/`` and read the data files those manifests name. A data file is
   invisible until its manifest exists, and a manifest only exists once its data file is complete,
   so a reader never sees half a shard. Data files left by a killed run (or by the loser of a race)
   have no manifest, are ignored, and can be removed with :meth:`ShardStore.gc_orphans`.
3. Shard ids are derived from their keys (:func:`shard_id_for`: a hash of the sorted keys), so a
   re-run after a crash that recomputes the same batch commits the same id. A second commit of an
   id that already has a manifest with the same keys is a no-op (``CommitResult.created`` is
   False); with *different* keys it is a clear error (the caller reused an id). Of two concurrent
   committers of one id exactly one publishes; the other sees ``FileExistsError`` internally,
   deletes its own data file and returns as a no-op. Because each attempt has its own data file,
   even a store that ignored the exclusive condition (last writer wins) would leave a manifest that
   points at its own complete data file: the worst case is an orphan, never a torn shard.
4. The same key can still be committed in two *different* shards: two jobs running at once over
   overlapping inputs, a re-run with another batch size while a previous run was still committing
   (its ``committed_keys`` snapshot was stale), or a deliberate forced re-score. ``read_table``
   keeps one row per key: the one from the most recently created manifest (ties broken by shard
   id), so a forced re-score overrides older results and the result is deterministic.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "filesystem",
    "to_uri",
    "is_local",
    "write_bytes",
    "content_key",
    "stat_many",
    "FileStat",
    "make_key",
    "shard_id_for",
    "exclusive_write",
    "ShardStore",
    "CommitResult",
]

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


def shard_id_for(keys: Iterable[str]) -> str:
    """Deterministic shard id from a shard's row keys (order-insensitive)."""
    h = hashlib.sha256()
    for k in sorted(set(map(str, keys))):
        h.update(k.encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# exclusive create


def exclusive_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create ``path`` with ``data`` only if it does not exist; ``FileExistsError`` otherwise.

    Local: a complete temporary file is hard-linked into place (atomic and exclusive). Elsewhere:
    ``fs.open(path, "xb")`` (s3fs sends ``If-None-Match: *``). ``data`` must not be empty: s3fs
    writes an empty file with an unconditional touch, i.e. *not* exclusively.
    """
    if not data:
        raise ValueError("exclusive_write needs non-empty data")
    if is_local(fs):
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-{os.path.basename(path)}-{uuid.uuid4().hex}")
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # FileExistsError if someone else got there first
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        _fsync_dir(parent)
        return
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
    except FileExistsError:
        raise
    except OSError as e:  # some backends report the failed precondition as a generic error
        if "precondition" in str(e).lower():
            raise FileExistsError(path) from e
        raise


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # durable before the manifest that names it
        return
    fs.pipe_file(path, data)


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


# --------------------------------------------------------------------------------------------------
# shard store

_SHARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,199}$")
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class CommitResult:
    shard_id: str
    file: str  # data file, relative to the store root
    num_rows: int
    created: bool  # False: the shard was already committed (by an earlier run or a concurrent writer)


class ShardStore:
    """Idempotent, resumable store of Parquet shards under ``root_uri`` (see module docstring)."""

    def __init__(self, root_uri: str, storage_options: Mapping[str, Any] | None = None, *, key_column: str = "key"):
        self.root_uri = os.fspath(root_uri)
        self.storage_options = dict(storage_options or {})
        self.key_column = key_column
        self.fs, self.root = filesystem(self.root_uri, self.storage_options)
        self.root = self.root.rstrip("/") or "/"
        self._manifests: dict[str, dict[str, Any]] = {}  # manifests are immutable: cache by name

    # paths ----------------------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if not is_local(self.fs) else os.path.join(self.root, *parts)

    def _manifest_path(self, shard_id: str) -> str:
        return self._p("_manifests", f"{shard_id}.json")

    # manifests ------------------------------------------------------------------------------------
    def _list_manifest_paths(self) -> list[str]:
        d = self._p("_manifests")
        try:
            names = self.fs.ls(d, detail=False, refresh=True) if not is_local(self.fs) else self.fs.ls(d, detail=False)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".json") and not posixpath.basename(n).startswith("."))

    def manifests(self) -> list[dict[str, Any]]:
        """All committed manifests, oldest first (by creation time, then shard id)."""
        paths = self._list_manifest_paths()
        missing = [p for p in paths if p not in self._manifests]
        if missing:
            blobs = self.fs.cat(missing) if len(missing) > 1 else {missing[0]: self.fs.cat_file(missing[0])}
            for p in missing:
                b = blobs[p]
                if isinstance(b, BaseException):
                    raise b
                self._manifests[p] = json.loads(b)
        ms = [self._manifests[p] for p in paths]
        return sorted(ms, key=lambda m: (m["created_ns"], m["shard_id"]))

    def _load_manifest(self, shard_id: str) -> dict[str, Any] | None:
        p = self._manifest_path(shard_id)
        if p in self._manifests:
            return self._manifests[p]
        try:
            if not is_local(self.fs):
                self.fs.invalidate_cache(p)
            b = self.fs.cat_file(p)
        except FileNotFoundError:
            return None
        m = json.loads(b)
        self._manifests[p] = m
        return m

    def committed_keys(self) -> set[str]:
        """Row keys of every committed shard."""
        out: set[str] = set()
        for m in self.manifests():
            out.update(m["keys"])
        return out

    def is_committed(self, shard_id: str) -> bool:
        return self._load_manifest(shard_id) is not None

    # commit ---------------------------------------------------------------------------------------
    def commit(self, shard_id: str | None, table: pa.Table, keys: Sequence[str]) -> CommitResult:
        """Write ``table`` (row i has key ``keys[i]``) as shard ``shard_id`` (None: :func:`shard_id_for`).

        Idempotent: if the shard is already committed with the same keys nothing is written and
        ``created`` is False. The same id with different keys raises ``ValueError``.
        """
        keys = [str(k) for k in keys]
        if len(keys) != table.num_rows:
            raise ValueError(f"{len(keys)} keys for {table.num_rows} rows")
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:10]
            raise ValueError(f"duplicate keys within one shard: {dup}")
        shard_id = shard_id or shard_id_for(keys)
        if not _SHARD_ID.match(shard_id):
            raise ValueError(f"invalid shard id {shard_id!r}: use letters, digits, '_', '-', '.', '='")

        existing = self._load_manifest(shard_id)
        if existing is not None:
            return self._same_shard(existing, keys)

        kc = self.key_column
        key_arr = pa.array(keys, pa.string())
        if kc in table.column_names:
            col = table.column(kc).cast(pa.string())
            if not col.equals(pa.chunked_array([key_arr])):
                raise ValueError(f"table column {kc!r} does not match `keys`")
            table = table.set_column(table.schema.get_field_index(kc), kc, key_arr)
        else:
            table = table.append_column(kc, key_arr)

        attempt = secrets.token_hex(6)
        rel = f"data/{shard_id}.{attempt}.parquet"
        data_path = self._p(*rel.split("/"))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        _write_bytes(self.fs, data_path, data)

        now_ns = time.time_ns()
        manifest = {
            "format": MANIFEST_FORMAT,
            "shard_id": shard_id,
            "file": rel,
            "num_rows": table.num_rows,
            "size": len(data),
            "key_column": kc,
            "keys": keys,
            "created": datetime.fromtimestamp(now_ns / 1e9, tz=timezone.utc).isoformat(),
            "created_ns": now_ns,
            "attempt": attempt,
        }
        try:
            exclusive_write(self.fs, self._manifest_path(shard_id), json.dumps(manifest).encode())
        except FileExistsError:
            # lost a race with a concurrent committer of the same shard: drop our data file
            try:
                self.fs.rm_file(data_path)
            except FileNotFoundError:
                pass
            existing = self._load_manifest(shard_id)
            if existing is None:  # pragma: no cover - manifests are never deleted by this class
                raise
            return self._same_shard(existing, keys)
        self._manifests[self._manifest_path(shard_id)] = manifest
        return CommitResult(shard_id, rel, table.num_rows, True)

    @staticmethod
    def _same_shard(existing: Mapping[str, Any], keys: Sequence[str]) -> CommitResult:
        if set(existing["keys"]) != set(keys):
            raise ValueError(
                f"shard {existing['shard_id']!r} is already committed with other keys "
                f"({existing['num_rows']} rows, file {existing['file']}); shard ids must be derived from their keys"
            )
        return CommitResult(existing["shard_id"], existing["file"], existing["num_rows"], False)

    # read -----------------------------------------------------------------------------------------
    def read_table(self, columns: Sequence[str] | None = None, *, newest: int | None = None) -> pa.Table:
        """All committed rows, one per key (newest committed shard wins), sorted by key; with `newest`,
        only the rows of the `newest` most recently committed shards (a sample of a large store).

        Only data files named by a manifest are read; orphans are ignored.
        """
        kc = self.key_column
        cols = None if columns is None else list(dict.fromkeys([*columns, kc]))
        tables = []
        manifests = self.manifests()
        for rank, m in enumerate(manifests[-newest:] if newest else manifests):
            t = pq.read_table(self._p(*m["file"].split("/")), filesystem=self.fs, columns=cols)
            if t.num_rows != m["num_rows"]:
                raise OSError(f"shard {m['shard_id']}: {t.num_rows} rows in {m['file']}, manifest says {m['num_rows']}")
            tables.append(t.append_column("__rank", pa.array([rank] * t.num_rows, pa.int64())))
        if not tables:
            return pa.table({c: pa.array([], pa.string()) for c in (columns or [kc])})
        t = pa.concat_tables(tables, promote_options="permissive")
        order = pc.sort_indices(t, sort_keys=[(kc, "ascending"), ("__rank", "descending")])
        t = t.take(order)
        k = t.column(kc).combine_chunks()
        if len(k) > 1:
            first = pc.not_equal(k.slice(1), k.slice(0, len(k) - 1))
            keep = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
            t = t.filter(keep)
        t = t.drop_columns(["__rank"])
        if columns is not None:
            t = t.select(list(columns))
        return t

    # maintenance ----------------------------------------------------------------------------------
    def orphans(self) -> list[str]:
        """Data files (relative to the root) that no manifest names."""
        named = {m["file"] for m in self.manifests()}
        d = self._p("data")
        try:
            found = self.fs.ls(d, detail=False, refresh=True) if not is_local(self.fs) else self.fs.ls(d, detail=False)
        except FileNotFoundError:
            return []
        rels = ["data/" + posixpath.basename(p) for p in found if p.endswith(".parquet")]
        return sorted(r for r in rels if r not in named)

    def gc_orphans(self, min_age_s: float = 24 * 3600) -> list[str]:
        """Delete orphaned data files older than ``min_age_s`` (younger ones may be commits in flight)."""
        removed = []
        now = time.time()
        for rel in self.orphans():
            p = self._p(*rel.split("/"))
            info = self.fs.info(p)
            mtime = info.get("LastModified") or info.get("mtime") or info.get("created")
            ts = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime or 0)
            if now - ts >= min_age_s:
                self.fs.rm_file(p)
                removed.append(rel)
        return removed
