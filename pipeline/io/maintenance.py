"""Table maintenance: compaction (Delta's optimize) and vacuum, for `securevqa vacuum`, the end of
`rescore` and a stage driver's compaction while it runs (docs/tables.md, "Maintenance schedule")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .storage import filesystem, is_local
from .table import KeyedTable, writer_properties


def maintain(uri: str, storage_options: Mapping[str, Any] | None = None, *, optimize: bool = True,
             vacuum: bool = True, retention_hours: int | None = None, dry_run: bool = False,
             target_size: int | None = None) -> dict[str, Any]:
    """Compact small files (Delta's optimize) and delete files no version still in the retention
    window needs, including data files never committed (Delta's full vacuum). `retention_hours`:
    None keeps the table's own `delta.deletedFileRetentionDuration` (7 days unless changed); files
    younger than it are kept, so a run writing right now loses nothing. Returns what was done."""
    table = KeyedTable(uri, storage_options)
    dt = table.delta_table()
    out: dict[str, Any] = {"uri": table.uri, "version_before": dt.version(),
                           "files_before": len(dt.file_uris())}
    if optimize and not dry_run:
        metrics = dt.optimize.compact(target_size=target_size, writer_properties=writer_properties())
        out["optimize"] = {k: metrics.get(k) for k in ("numFilesAdded", "numFilesRemoved", "totalConsideredFiles")}
    if vacuum:
        enforce = retention_hours is None or retention_hours >= 168
        removed = dt.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=enforce,
                            full=True)
        out["vacuum"] = {"removed" if not dry_run else "would_remove": len(removed), "files": sorted(removed)[:20]}
    dt.update_incremental()
    out["version_after"], out["files_after"] = dt.version(), len(dt.file_uris())
    return out


def local_files(uri: str) -> int:
    """Parquet files under a local table's folder, committed or not (for benchmarks and tests)."""
    path = KeyedTable(uri).uri
    fs, _ = filesystem(path)
    assert is_local(fs)
    return sum(1 for folder, _, files in os.walk(path) if "_delta_log" not in folder
               for f in files if f.endswith(".parquet"))
