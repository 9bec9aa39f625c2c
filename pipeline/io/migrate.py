"""Convert a shard store (the table format before Delta, securevqa 0.1) into a Delta table, in place.

A shard store's folder holds ``_manifests/<shard>.json`` (committed shards, each naming its data file,
with its keys and creation time) and ``data/<shard>.<attempt>.parquet``; a data file no manifest names
was never committed, and when one key was committed in two shards the newest manifest's row counts.
:func:`migrate` reads exactly those rows, one per key, writes them as the first version of a Delta table
in the same folder, then removes ``_manifests/`` and ``data/``: the same rows, keys and columns, so a
re-run after the conversion skips every video the store had. `securevqa migrate URI` runs it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .storage import filesystem, join_uri
from .table import KeyedTable, TableError, retention_properties

log = logging.getLogger("securevqa.io.migrate")


def is_shard_store(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether `uri` is a shard store (has ``_manifests/``) not converted yet (no ``_delta_log/``)."""
    fs, path = filesystem(uri, storage_options)
    return fs.exists(join_uri(path, "_manifests")) and not fs.exists(join_uri(path, "_delta_log"))


def read_shard_store(uri: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """A shard store's committed rows, one per key (the newest committed shard's row wins), sorted by key."""
    fs, root = filesystem(uri, storage_options)
    names = sorted(n for n in fs.ls(join_uri(root, "_manifests"), detail=False) if n.endswith(".json"))
    manifests = sorted((json.loads(fs.cat_file(n)) for n in names), key=lambda m: (m["created_ns"], m["shard_id"]))
    tables = []
    for rank, m in enumerate(manifests):
        t = pq.read_table(join_uri(root, *m["file"].split("/")), filesystem=fs)
        if t.num_rows != m["num_rows"]:
            raise OSError(f"{uri}: shard {m['shard_id']} has {t.num_rows} rows in {m['file']}, its manifest "
                          f"says {m['num_rows']}: the store is damaged")
        tables.append(t.append_column("__rank", pa.array([rank] * t.num_rows, pa.int64())))
    if not tables:
        raise ValueError(f"{uri}: the shard store has no committed shard; delete the folder instead")
    key = manifests[0].get("key_column", "key")
    t = pa.concat_tables(tables, promote_options="permissive")
    t = t.take(pc.sort_indices(t, sort_keys=[(key, "ascending"), ("__rank", "descending")]))
    keys = t.column(key).combine_chunks()
    first = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).fill_null(True)
    return t.filter(pa.concat_arrays([pa.array([True]), first])).drop_columns(["__rank"])


def migrate(uri: str, storage_options: Mapping[str, Any] | None = None, *, dry_run: bool = False) -> dict[str, Any]:
    """Convert the shard store at `uri` into a Delta table in place (module docstring). Returns the rows
    and files involved; a Delta table already is left alone (``already_delta``). Raises
    FileNotFoundError for a path that does not exist, TableError for a folder that is neither."""
    fs, path = filesystem(uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: the path does not exist")
    if fs.exists(join_uri(path, "_delta_log")) and not fs.exists(join_uri(path, "_manifests")):
        return {"uri": uri, "already_delta": True, "rows": 0, "old_files": 0, "dry_run": dry_run}
    if not is_shard_store(uri, storage_options):
        raise TableError(f"{uri} is not a shard store (no _manifests/ folder)")
    rows = read_shard_store(uri, storage_options)
    fs, root = filesystem(uri, storage_options)
    old = [p for d in ("_manifests", "data") if fs.exists(join_uri(root, d))
           for p in fs.find(join_uri(root, d))]
    out = {"uri": uri, "rows": rows.num_rows, "old_files": len(old), "dry_run": dry_run}
    if dry_run:
        return out
    table = KeyedTable(uri, storage_options)
    # Not `KeyedTable.create`: it refuses a folder that still holds a shard store, which this one does
    # until the rows are committed.
    from deltalake import write_deltalake

    write_deltalake(table.uri, rows, mode="error", configuration=retention_properties(),
                    storage_options=table.delta_options)
    out["version"] = table.version()
    for p in old:  # the Delta table holds every row now: the old files go, manifests first
        fs.rm_file(p)
    for d in ("_manifests", "data"):
        try:
            fs.rmdir(join_uri(root, d))
        except (FileNotFoundError, OSError):
            pass
    log.info("%s: %d rows from %d files are now version %s of a Delta table", uri, rows.num_rows, len(old),
             out["version"])
    return out
