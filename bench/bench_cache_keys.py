"""Cached embeddings by key at catalog scale (`make bench`; docs/capacity.md): start-up and memory against
the cache's size.

For inter caches of 1 k, 10 k and 100 k keys (Delta tables of stage-1 rows, committed 1,000 rows a version
and then compacted, as a nightly job leaves them; `tiny` embeddings of 16 x 64 float32, 4 KB a row; the
`paper` model's are 4x larger), in one process:
- before: what every stage-2 actor did at start-up, index key -> data file of the whole cache (the former
  `InterCache.__init__`), its seconds and the memory it kept;
- now: what the driver does once per run (`keyed_read.locate` of the keys to score) and what an actor does
  at start-up (open the table handle: nothing is read);
- per batch of 16 videos: the keyed read of their embeddings (`keyed_read.read_located`: only the row
  groups holding them), median of 20, for 16 random keys (few cached videos among new ones) and for 16
  consecutive keys in location order (a re-score of a warm cache: the driver sorts its rows so).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import psutil

from bench.machine import cpu_name

DIM = 16 * 64


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def build(path: Path, n: int) -> list[str]:
    from pipeline.io.maintenance import maintain
    from pipeline.io.table import KeyedTable
    from pipeline.stages.inter import INTER_SCHEMA

    keys = [f"{i:016x}{(i * 2654435761) % 2**32:08x}" for i in range(n)]
    if (path / "_delta_log").exists() and (path / ".row_groups_512").exists():
        return keys
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    table = KeyedTable(str(path))
    table.create(INTER_SCHEMA)
    rng = np.random.default_rng(0)
    for start in range(0, n, 1000):
        part = keys[start:start + 1000]
        emb = rng.standard_normal((len(part), DIM), dtype=np.float32)
        cols = {name: pa.nulls(len(part), INTER_SCHEMA.field(name).type) for name in INTER_SCHEMA.names}
        cols.update(key=pa.array(part), status=pa.array(["ok"] * len(part)),
                    embedding=pa.array(list(emb), type=pa.list_(pa.float32())),
                    segments=pa.array([16] * len(part), pa.int32()))
        table.commit(pa.table(cols, schema=INTER_SCHEMA))
    maintain(str(path), {}, vacuum=True)
    (path / ".row_groups_512").touch()
    return keys


def old_actor_index(uri: str) -> dict:
    """The former per-actor start-up: the whole cache's key -> data file index."""
    from pipeline.io.table import KeyedTable

    ds = KeyedTable(uri).dataset()
    files = {f.path: f for f in ds.get_fragments()}
    index = ds.to_table(columns=["key", "__filename"])
    return {"files": files, "where": dict(zip(index.column("key").to_pylist(), index.column("__filename").to_pylist()))}


def measure(uri: str, keys: list[str], batches: int = 20) -> dict:
    from pipeline.io.keyed_read import locate, read_located
    from pipeline.io.table import KeyedTable

    r0 = _rss()
    t = time.perf_counter()
    index = old_actor_index(uri)
    old_s, old_mb = time.perf_counter() - t, (_rss() - r0) / 2**20
    del index
    r0 = _rss()
    t = time.perf_counter()
    located = locate(KeyedTable(uri), keys)
    locate_s, locate_mb = time.perf_counter() - t, (_rss() - r0) / 2**20
    t = time.perf_counter()
    KeyedTable(uri)
    actor_s = time.perf_counter() - t
    rng = np.random.default_rng(1)
    reads, sorted_reads = [], []
    order = sorted(keys, key=located.get)  # the driver sorts the rows to score by location
    for b in range(batches):
        for sample, out in ((list(rng.choice(keys, 16, replace=False)), reads),
                            (order[b * 16 * 7 % (len(order) - 16):][:16], sorted_reads)):
            t = time.perf_counter()
            got = read_located(KeyedTable(uri), [located[k] for k in sample], ["key", "embedding", "segments", "status"],
                                               keys=sample)
            out.append(time.perf_counter() - t)
            assert got.num_rows == 16
    return {"keys": len(keys), "files": len(set(located.values())), "old_actor_start_s": old_s,
            "old_actor_index_mb": old_mb, "driver_locate_s": locate_s, "driver_locate_mb": locate_mb,
            "new_actor_start_s": actor_s, "batch_read_s": statistics.median(reads),
            "sorted_batch_read_s": statistics.median(sorted_reads)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--work", default="bench_output/cache_keys")
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    print(f"{cpu_name()}; inter cache rows of {DIM} float32 (tiny), compacted")
    out = []
    for n in args.sizes:
        keys = build(work / f"cache_{n}", n)
        r = measure(str(work / f"cache_{n}"), keys)
        out.append(r)
        print(f"{n:>7,} keys ({r['files']} files): before, every actor at start-up {r['old_actor_start_s']:.2f} s and "
              f"{r['old_actor_index_mb']:.0f} MB; now the driver once {r['driver_locate_s']:.2f} s and "
              f"{r['driver_locate_mb']:.0f} MB, an actor {1000 * r['new_actor_start_s']:.1f} ms and nothing kept; "
              f"keyed read of a batch of 16: {1000 * r['batch_read_s']:.0f} ms (random keys), "
              f"{1000 * r['sorted_batch_read_s']:.0f} ms (consecutive in location order)", flush=True)
    Path("bench_output").mkdir(exist_ok=True)
    Path("bench_output/cache_keys.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
