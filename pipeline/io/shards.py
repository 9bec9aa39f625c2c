"""An idempotent shard store: Parquet shards committed whole, one row per key (local paths or s3://).

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .storage import exclusive_write, filesystem, is_local, write_file


def shard_id_for(keys: Iterable[str]) -> str:
    """Deterministic shard id from a shard's row keys (order-insensitive)."""
    h = hashlib.sha256()
    for k in sorted(set(map(str, keys))):
        h.update(k.encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


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
        write_file(self.fs, data_path, data)

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
    def read_shard(self, file: str) -> pa.Table:
        """The data file of one committed shard (`file` as its manifest names it), all its columns."""
        return pq.read_table(self._p(*file.split("/")), filesystem=self.fs)

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
