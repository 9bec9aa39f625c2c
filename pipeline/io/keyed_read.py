"""Keyed reads of a `KeyedTable`: where each key's row is (`locate`, once, on a driver) and those rows
read back by row group (`read_located`, in each task), so that a reader of a few keys reads little more
than their rows, whatever the table's size (docs/tables.md, "Row groups and keyed reads")."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .storage import filesystem
from .table import KeyedTable

def locate(table: KeyedTable, keys: Iterable[str] | None = None, *, status: str | None = None) -> dict[str, str]:
    """key -> location of its row in the latest version, "<data file URI>#<row group>", for `keys` (all
    when None; with `status`, only rows with that status). `table.read_version` is then the version this saw.

    What a keyed read (`read_located`) needs: a driver locates once, and each batch then reads only the
    row groups of its own keys (ROW_GROUP_ROWS rows each), instead of every reader indexing or scanning
    the whole table (docs/capacity.md). Reads the key (and status) column and each file's footer once.
    """
    import pyarrow.parquet as pq

    dt = table._table()
    if dt is None:
        return {}
    table.read_version = dt.version()
    wanted = None if keys is None else pa.array(sorted(set(keys)), pa.string())
    root = table.uri.rstrip("/")
    out: dict[str, str] = {}
    for fragment in dt.to_pyarrow_dataset().get_fragments():
        t = fragment.to_table(columns=[table.key_column] + (["status"] if status else []))
        position = pa.array(range(t.num_rows), pa.int64())
        keep = pc.equal(t.column("status"), status) if status else None
        if wanted is not None:
            hit = pc.is_in(t.column(table.key_column), value_set=wanted)
            keep = hit if keep is None else pc.and_(keep, hit)
        if keep is not None:
            t, position = t.filter(keep), position.filter(keep)
        if not t.num_rows:
            continue
        file = f"{root}/{fragment.path}"
        fs, path = filesystem(file, table.storage_options)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        starts = list(itertools.accumulate(sizes, initial=0))
        for k, pos in zip(t.column(table.key_column).to_pylist(), position.to_pylist()):
            out[k] = f"{file}#{bisect.bisect_right(starts, pos) - 1}"
    return out

def read_located(table: KeyedTable, locations: Iterable[str], columns: Sequence[str] | None = None,
             keys: Iterable[str] | None = None) -> pa.Table:
    """The rows at `locations` (from `locate`), filtered to `keys` if given: each data file opened once,
    only the row groups named read. A file gone since it was located (compacted and vacuumed) is read
    by key from the latest version instead (needs `keys`). Rows come in no particular order."""
    import pyarrow.parquet as pq

    groups: dict[str, set[int]] = {}
    for loc in locations:
        file, _, rg = loc.rpartition("#")
        groups.setdefault(file, set()).add(int(rg))
    wanted = None if keys is None else pa.array(sorted(set(keys)), pa.string())
    parts, lost = [], False
    for file, rgs in groups.items():
        fs, path = filesystem(file, table.storage_options)
        try:
            with fs.open(path, "rb") as f:
                t = pq.ParquetFile(f).read_row_groups(sorted(rgs), columns=None if columns is None else list(columns))
        except FileNotFoundError:
            lost = True
            continue
        if wanted is not None:
            t = t.filter(pc.is_in(t.column(table.key_column), value_set=wanted))
        parts.append(t)
    if lost:
        if wanted is None:
            raise FileNotFoundError("a located data file is gone and no keys were given to find its rows again")
        found = pa.concat_tables(parts).column(table.key_column).to_pylist() if parts else []
        missing = set(wanted.to_pylist()) - set(found)
        parts.append(table.rows_for(missing, columns))
    if not parts:
        return table.rows_for([], columns)
    return pa.concat_tables(parts, promote_options="permissive")
