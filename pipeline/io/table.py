"""Output tables as Delta Lake tables (delta-rs): one row per key, for every engine that reads Delta.

Every stage output (the inter-embedding cache, the score table, the attack job's clean scores and
results) and the nightly catalog table is a Delta table, local or on S3. DuckDB's ``delta_scan``,
Polars' ``read_delta``, Spark, Trino and ``deltalake`` itself read exactly the rows of committed
versions; a data file whose commit never happened (a worker killed between writing and committing)
is not in the log, so no reader sees it, and ``vacuum`` removes it (:func:`maintain`).

Commit protocol (:meth:`KeyedTable.commit`), docs/design.md §4.1
-----------------------------------------------------------------
Rows carry a ``key`` (video version x model x options); a key is committed at most once. Each commit

1. brings its view of the log up to date and reads the keys that commits after its last view added
   (every commit of ours records its keys in the commit info, ``securevqa.keys``; a commit that adds
   rows and does not say which makes it re-read the table's key column);
2. drops the rows whose keys are committed already (by another actor, an orphaned actor of a killed
   run, or a second job over the same inputs);
3. writes the rest as one Parquet file and commits it as exactly the next version, with no automatic
   rebase (``max_commit_retries=0``). If another commit took that version first the attempt fails,
   and the loop goes back to 1. The log's put-if-absent of each version is the only lock, so two
   committers of one key cannot both win, on a local disk or on S3 with conditional writes
   (``conditional_put=etag``, set by :func:`delta_storage_options`).

A failed attempt leaves its Parquet file uncommitted: invisible, and removed by the next vacuum.

With ``upsert=True`` (``--retry-errors``) the commit replaces the batch's keys' earlier rows in the
same version (a predicate overwrite), so a retried error row is replaced, never duplicated.

Where the committer starts (``since``): a driver reads which keys are committed at some version v
and hands v to its actors, so a key committed after v by anyone is seen by step 1.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from .storage import delta_storage_options, filesystem, join_uri

log = logging.getLogger("securevqa.io.table")

KEYS_METADATA = "securevqa.keys"  # commit-info field: the keys a commit added (a JSON list)
# Attempts of one commit before it gives up: each failed attempt means another commit won that version,
# so the table moved on; 60 attempts at up to 2 s apart ride out dozens of actors committing at once.
COMMIT_ATTEMPTS = 60

# Defaults of the table properties that bound history (Delta's own names): how long a replaced or
# removed data file stays for time travel, and how long the log keeps old versions.
DEFAULT_FILE_RETENTION = "interval 7 days"
DEFAULT_LOG_RETENTION = "interval 30 days"


# Rows per Parquet row group in every data file we write or compact. Small enough that a keyed read
# (`read_located`) of a few rows reads little beyond them: 512 inter embeddings of the paper model are 8 MB
# (tiny: 2 MB), 512 score rows about 0.5 MB; engines that scan whole tables read them as fast.
ROW_GROUP_ROWS = 512


def writer_properties() -> WriterProperties:
    """The Parquet writer settings of every data file of our tables (ROW_GROUP_ROWS)."""
    return WriterProperties(max_row_group_size=ROW_GROUP_ROWS)


def retention_properties(file_retention: str = DEFAULT_FILE_RETENTION,
                         log_retention: str = DEFAULT_LOG_RETENTION) -> dict[str, str]:
    """The table properties that bound time travel: data files a newer version replaced are kept for
    `file_retention` (vacuum removes them after), log entries for `log_retention` (Delta intervals)."""
    return {"delta.deletedFileRetentionDuration": file_retention, "delta.logRetentionDuration": log_retention}


class TableError(ValueError):
    """A table the caller named cannot be read as asked: not a Delta table (a shard store not
    converted yet), or no such version or time in its history."""


@dataclass(frozen=True)
class CommitResult:
    """What one :meth:`KeyedTable.commit` did: the table version it created (None when every key was
    committed already), the rows it added, the keys it left out, and how many attempts it took."""

    version: int | None
    num_rows: int
    skipped: tuple[str, ...] = ()
    attempts: int = 1

    @property
    def created(self) -> bool:
        return self.version is not None


class KeyedTable:
    """A Delta table at `uri` (local path or s3://) holding one row per `key_column` value.

    `since`: the table version up to which the caller already knows the committed keys (a driver's
    pending computation); commits check every later version for keys they would repeat. None: the
    version when this object first looks at the table, so keys committed before it are not checked
    (the driver drops them before any commit: `pending`).
    """

    def __init__(self, uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None, *,
                 key_column: str = "key", since: int | None = None) -> None:
        self.uri = _table_uri(os.fspath(uri))
        self.storage_options = dict(storage_options or {})
        self.delta_options = delta_storage_options(self.uri, self.storage_options)
        self.key_column = key_column
        self._dt: DeltaTable | None = None
        self.since = since
        self._seen = since  # every version <= _seen has been checked for keys
        self._recent: set[str] = set()  # keys committed in versions (since, _seen]
        self.read_version: int | None = None  # the version the last `read` of the latest version saw

    # ---------------------------------------------------------------------------------------------
    # opening and creating

    def _table(self) -> DeltaTable | None:
        if self._dt is None:
            try:
                self._dt = DeltaTable(self.uri, storage_options=self.delta_options)
            except TableNotFoundError:
                return None
            except DeltaError as exc:  # a path that is a file, or no folder at all
                if "location" in str(exc).lower() or "not exist" in str(exc).lower():
                    return None
                raise
        else:
            self._dt.update_incremental()
        return self._dt

    def exists(self) -> bool:
        return self._table() is not None

    def version(self) -> int | None:
        """The latest committed version, or None if there is no table yet."""
        dt = self._table()
        return None if dt is None else dt.version()

    def create(self, schema: pa.Schema, *, file_retention: str = DEFAULT_FILE_RETENTION,
               log_retention: str = DEFAULT_LOG_RETENTION) -> int:
        """Create the table with `schema` if it does not exist (racing creators are fine); returns the
        latest version. Retention (Delta intervals, e.g. "interval 14 days") bounds time travel."""
        if self._table() is None:
            hint = _legacy_hint(self.uri, self.storage_options)
            if hint:
                raise TableError(f"{self.uri} is not a Delta table{hint}")
            if self.key_column not in schema.names:
                raise ValueError(f"schema has no key column {self.key_column!r}: {schema.names}")
            try:
                DeltaTable.create(self.uri, schema, mode="ignore",
                                  configuration=retention_properties(file_retention, log_retention),
                                  storage_options=self.delta_options)
            except CommitFailedError:  # another driver created it first
                pass
        v = self.version()
        assert v is not None
        if self._seen is None:
            self._seen = v
        return v

    def set_retention(self, *, file_retention: str | None = None, log_retention: str | None = None) -> None:
        """Change how long history is kept (Delta table properties; see `create`)."""
        dt = self._require()
        current = dt.metadata().configuration
        props = {k: v for k, v in (("delta.deletedFileRetentionDuration", file_retention),
                                   ("delta.logRetentionDuration", log_retention)) if v and current.get(k) != v}
        if props:  # only a change is a commit: a nightly job that says the same thing adds no version
            dt.alter.set_table_properties(props)

    def delta_table(self) -> DeltaTable:
        """The latest version as delta-rs' DeltaTable (for what this class does not wrap). Raises
        FileNotFoundError if there is no table, TableError for a shard store not converted yet."""
        return self._require()

    def _require(self) -> DeltaTable:
        dt = self._table()
        if dt is None:
            hint = _legacy_hint(self.uri, self.storage_options)
            if hint:
                raise TableError(f"{self.uri} is not a Delta table{hint}")
            raise FileNotFoundError(f"no Delta table at {self.uri}")
        return dt

    # ---------------------------------------------------------------------------------------------
    # reading

    def read(self, columns: Sequence[str] | None = None, *, version: int | None = None,
             as_of: datetime | str | None = None, limit: int | None = None) -> pa.Table:
        """The table's rows (one per key), all or `columns`; at `version` or as of a timestamp `as_of`
        (a datetime or an ISO 8601 string, e.g. "2026-11-29T00:00:00Z": Delta time travel). `limit`:
        at most that many rows (a sample for statistics). A missing table reads as zero rows of
        `columns` when they are given; otherwise raises FileNotFoundError."""
        if version is not None or as_of is not None:
            dt = self._travel(version, as_of)
            self.read_version = dt.version()
        else:
            maybe = self._table()
            if maybe is None:
                if columns is None:
                    self._require()
                self.read_version = None
                return pa.table({c: pa.array([], pa.string()) for c in columns})
            dt = maybe
            self.read_version = dt.version()
        ds = dt.to_pyarrow_dataset()
        cols = None if columns is None else list(columns)
        try:
            return ds.head(limit, columns=cols) if limit is not None else ds.to_table(columns=cols)
        except (OSError, DeltaError) as exc:
            if dt is self._dt:
                raise
            raise TableError(f"{self.uri}: the data files of version {dt.version()} are gone (a vacuum with a "
                             f"retention shorter than its age removed them); read a later version") from exc

    def _travel(self, version: int | None, as_of: datetime | str | None) -> DeltaTable:
        self._require()
        dt = DeltaTable(self.uri, storage_options=self.delta_options)  # a separate handle: ours stays current
        if version is None:
            when = _timestamp(as_of)
            when = when if isinstance(when, datetime) and when.tzinfo else datetime.fromisoformat(str(when))
            first = min(dt.history(), key=lambda h: h["version"])
            created = datetime.fromtimestamp(first["timestamp"] / 1000, tz=UTC)
            if when.astimezone(UTC) < created:  # delta-rs would give the first version instead
                raise TableError(f"{self.uri} has nothing as of {as_of}: its oldest version kept is "
                                 f"{first['version']}, of {created.isoformat(timespec='seconds')}")
        latest = self.version()
        if version is not None and latest is not None and version > latest:
            raise TableError(f"{self.uri} has no version {version}: its latest is {latest}")
        try:
            dt.load_as_version(version if version is not None else _timestamp(as_of))
        except Exception as exc:  # delta-rs raises its generic error for a version or time it lacks
            first = min(h["version"] for h in dt.history())
            what = f"version {version}" if version is not None else f"a version as of {as_of}"
            raise TableError(f"{self.uri} has no {what} any more: it keeps versions {first} to {latest} "
                             "(log retention removes older ones)") from exc
        return dt

    def committed_keys(self, *, status: str | None = None) -> set[str]:
        """Keys of the latest version; with `status`, only those of rows with that status."""
        t = self.read([self.key_column] + (["status"] if status else []))
        keys = t.column(self.key_column)
        if status is not None:
            keys = keys.filter(pc.equal(t.column("status"), status))
        return set(keys.to_pylist())

    def dataset(self) -> pads.Dataset:
        """The latest version as a pyarrow dataset (its fragments are the table's data files)."""
        return self._require().to_pyarrow_dataset()

    def rows_for(self, keys: Iterable[str], columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of `keys` (those committed), all or `columns`."""
        wanted = pa.array(sorted(set(keys)), pa.string())
        dt = self._table()
        if dt is None or not len(wanted):
            return pa.table({c: pa.array([], pa.string()) for c in (columns or [self.key_column])})
        return dt.to_pyarrow_dataset().to_table(columns=None if columns is None else list(columns),
                                                filter=pads.field(self.key_column).isin(wanted))

    def overwrite(self, table: pa.Table) -> int:
        """Replace the table's rows with `table` as one new version (a catalog snapshot); earlier
        versions stay readable by time travel for the retention period. Creates the table if needed.
        Raises ValueError if `table` repeats a key. Returns the new version."""
        keys = table.column(self.key_column)
        if pc.count_distinct(keys).as_py() != len(keys):
            raise ValueError(f"{self.uri}: a key twice in a table snapshot")
        if self._table() is None:
            self.create(table.schema)
        write_deltalake(self._require(), table, mode="overwrite", schema_mode="overwrite",
                        writer_properties=writer_properties())
        return self._require().version()

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The commits, newest first (Delta's commit infos: version, timestamp, operation, metrics)."""
        return self._require().history(limit)

    # ---------------------------------------------------------------------------------------------
    # committing

    def commit(self, table: pa.Table, *, upsert: bool = False) -> CommitResult:
        """Append `table`'s rows whose keys are not committed yet, as one new table version (module
        docstring). `upsert`: replace earlier rows of the same keys in that version instead (retrying
        failed rows). Creates the table with `table`'s schema if there is none. Raises ValueError if
        `table` repeats a key, RuntimeError after COMMIT_ATTEMPTS lost races."""
        kc = self.key_column
        if kc not in table.column_names:
            raise ValueError(f"rows have no key column {kc!r}")
        keys = [str(k) for k in table.column(kc).to_pylist()]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a key twice in one commit: {sorted({k for k in keys if keys.count(k) > 1})[:10]}")
        if not keys:
            return CommitResult(None, 0)
        if self._table() is None:
            self.create(table.schema)
        attempts = 0
        try:
            for attempt in Retrying(retry=retry_if_exception_type(CommitFailedError), reraise=True,
                                    stop=stop_after_attempt(COMMIT_ATTEMPTS),
                                    wait=wait_random_exponential(multiplier=0.02, max=2.0)):
                with attempt:
                    attempts += 1
                    result = self._try_commit(table, keys, upsert)
        except CommitFailedError as exc:
            raise RuntimeError(f"{self.uri}: gave up committing {len(keys)} rows after {attempts} attempts "
                               f"lost to concurrent commits") from exc
        return CommitResult(result.version, result.num_rows, result.skipped, attempts)

    def _try_commit(self, table: pa.Table, keys: list[str], upsert: bool) -> CommitResult:
        dt = self._require()
        current = dt.version()
        self._catch_up(dt, current)
        fresh = [k not in self._recent for k in keys]
        skipped = tuple(k for k, f in zip(keys, fresh) if not f)
        if not any(fresh):
            return CommitResult(None, 0, skipped)
        rows = table if all(fresh) else table.filter(pa.array(fresh))
        new_keys = [k for k, f in zip(keys, fresh) if f]
        props = CommitProperties(custom_metadata={KEYS_METADATA: json.dumps(new_keys)}, max_commit_retries=0)
        if upsert:
            listed = ", ".join("'" + k.replace("'", "''") + "'" for k in new_keys)
            write_deltalake(dt, rows, mode="overwrite", predicate=f"{self.key_column} IN ({listed})",
                            schema_mode="merge", commit_properties=props, writer_properties=writer_properties())
        else:
            write_deltalake(dt, rows, mode="append", schema_mode="merge", commit_properties=props,
                            writer_properties=writer_properties())
        # max_commit_retries=0: the commit is exactly the version after the one this attempt checked.
        self._seen = current + 1
        self._recent.update(new_keys)
        return CommitResult(current + 1, rows.num_rows, skipped)

    def _catch_up(self, dt: DeltaTable, current: int) -> None:
        """Read the keys that versions (_seen, current] added into `_recent`."""
        if self._seen is None:
            self._seen = current
            return
        if current <= self._seen:
            return
        # The log's commit files themselves, not DeltaTable.history(): history numbers its entries down
        # from the handle's version, so a commit that lands between our update and the call shifts them.
        fs, root = filesystem(self.uri, self.storage_options)
        paths = [join_uri(root, "_delta_log", f"{v:020d}.json") for v in range(self._seen + 1, current + 1)]
        try:
            blobs = fs.cat(paths) if len(paths) > 1 else {paths[0]: fs.cat_file(paths[0])}
        except FileNotFoundError:
            blobs = {}
        unlisted = len(blobs) != len(paths) or any(isinstance(b, BaseException) for b in blobs.values())
        for blob in ([] if unlisted else blobs.values()):
            actions = [json.loads(line) for line in blob.splitlines() if line.strip()]
            info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            if KEYS_METADATA in info:
                self._recent.update(json.loads(info[KEYS_METADATA]))
            elif any(a.get("add", {}).get("dataChange") for a in actions):
                unlisted = True  # rows from a writer that does not list its keys
                break
        if unlisted:  # (or log entries already cleaned up): the table's key column says it all
            log.info("%s: versions %d to %d do not all list their keys; reading the key column", self.uri,
                     self._seen + 1, current)
            self._recent.update(self.read([self.key_column], version=current).column(self.key_column).to_pylist())
        self._seen = current


def _table_uri(uri: str) -> str:
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        if scheme.lower() == "file":
            return os.path.abspath(rest)
        return ("s3" if scheme.lower() == "s3a" else scheme) + "://" + rest.rstrip("/")
    return os.path.abspath(uri)


def _timestamp(as_of: datetime | str | None) -> datetime | str:
    if isinstance(as_of, str):
        return datetime.fromisoformat(as_of)
    assert as_of is not None
    return as_of


def _legacy_hint(uri: str, storage_options: Mapping[str, Any]) -> str:
    """Why a folder is not a Delta table, when it is a store of the format before it."""
    try:
        fs, path = filesystem(uri, storage_options)
        if fs.exists(path.rstrip("/") + "/_manifests"):
            return (" (it is a shard store written before the Delta format, securevqa < 0.2: convert it with "
                    f"`securevqa migrate {uri}`)")
    except Exception:  # noqa: BLE001 - a hint only
        pass
    return ""
