"""Delta table benchmark (`make bench`): what the output tables cost at catalog scale, measured here.

One committer writes score-table rows (the score stage's schema, 16 videos per commit as the stage
does at --batch-size 16) into a local Delta table until it holds N, 4N and 16N commits. Reported:

- commit latency (median and p95 per size): one `KeyedTable.commit`, i.e. catch up on the log, drop
  keys already committed, write one Parquet file, put the next log version; without compaction and
  with the compaction a stage's driver runs every `RunOptions.compact_every` commits. Commits to one
  table are serial (each is a new version), so the whole 1 M-video catalog's commit time is modelled
  as 62,500 x the compacted latency at the largest size; files per 1 M videos without compaction come
  from the same count (one data file and one log entry per commit, a checkpoint every 100 versions);
- concurrent committers (4 threads, overlapping keys): commits per second and attempts per commit;
- read time of the whole table and of its key column before and after compaction (`securevqa
  vacuum`: optimize, then vacuum), and the files it leaves;
- peak memory (ru_maxrss) of a fresh driver process that opens the table, reads which keys are
  committed and commits one batch, at N, 4N and 16N commits: the memory a job's driver needs to
  start as the table grows.

The figures name the machine's CPU; they are for one local disk (S3 adds a round trip per request).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
BATCH = 16
CATALOG = 1_000_000


def _batch(start: int, n: int = BATCH) -> pa.Table:
    from pipeline.stages.scoring import SCORE_SCHEMA

    rows = []
    for i in range(start, start + n):
        rows.append({name: None for name in SCORE_SCHEMA.names} | {
            "key": f"{i:012d}" + "f" * 52, "video_id": f"v{i:07d}", "uri": f"s3://catalog/videos/v{i:07d}.mp4",
            "content_key": f"etag={i:032x}:size=1048576", "status": "ok", "score": float(i % 97) / 97,
            "clip_scores": [0.1, 0.2, 0.3, 0.4], "model_version": "bench", "num_frames": 300, "width": 1920,
            "height": 1080, "fps": 30.0, "decode_s": 0.5, "model_s": 0.05, "created_at": time.time()})
    return pa.Table.from_pylist(rows, schema=SCORE_SCHEMA)




def grow(uri: str, commits: int, start: int, compact_every: int = 0) -> list[float]:
    """Commit `commits` batches after the first `start` ones, compacting every `compact_every` commits
    as a stage's driver does (0: never); seconds per commit."""
    from pipeline.io.maintenance import maintain
    from pipeline.io.table import KeyedTable

    table = KeyedTable(uri)
    out = []
    for c in range(start, start + commits):
        batch = _batch(c * BATCH)
        t = time.perf_counter()
        table.commit(batch)
        out.append(time.perf_counter() - t)
        if compact_every and (c + 1) % compact_every == 0:
            maintain(uri, vacuum=False)
    return out


def driver_memory(uri: str) -> dict:
    """Peak RSS of a fresh process doing a driver's start on `uri` (see module docstring)."""
    code = (
        "import json, time\n"
        "def hwm():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)\n"
        "    line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
        "    return int(line.split()[1]) / 1024\n"
        "from pipeline.io.table import KeyedTable\n"
        "from bench.bench_tables import _batch\n"
        "_batch(0)  # imports what a driver imports anyway (the stage's schema), before the baseline\n"
        "base = hwm()\n"
        f"t = KeyedTable({uri!r}); t0 = time.perf_counter(); keys = t.committed_keys()\n"
        "read_s = time.perf_counter() - t0\n"
        "c = KeyedTable(t.uri, since=t.read_version); c.commit(_batch(10**9))\n"
        "peak = hwm()\n"
        "print(json.dumps({'keys': len(keys), 'read_keys_s': read_s, 'rss_after_imports_mb': base,"
        " 'peak_rss_mb': peak}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def concurrent(uri: str, threads: int = 4, per_thread: int = 25) -> dict:
    from pipeline.io.table import KeyedTable

    since = KeyedTable(uri).create(_batch(0).schema)
    results: list = []

    def actor(w: int) -> None:
        table = KeyedTable(uri, since=since)
        for b in range(per_thread):
            results.append(table.commit(_batch(((w + b) % (threads * per_thread // 2)) * BATCH)))

    t = time.perf_counter()
    ts = [threading.Thread(target=actor, args=(w,)) for w in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    wall = time.perf_counter() - t
    rows = KeyedTable(uri).read(["key"]).num_rows
    committed = sum(r.created for r in results)
    return {"threads": threads, "commit_calls": len(results), "commits": committed, "rows": rows,
            "distinct_keys": rows, "commits_per_s": committed / wall,
            "attempts_per_call": statistics.mean(r.attempts for r in results),
            "max_attempts": max(r.attempts for r in results)}


def read_seconds(uri: str, repeats: int = 3) -> dict:
    from pipeline.io.table import KeyedTable

    def timed(columns):
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            KeyedTable(uri).read(columns)
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    return {"all_columns_s": timed(None), "key_column_s": timed(["key"])}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="N: the table grows to N, 4N, 16N commits of 16 rows")
    p.add_argument("--work", default="bench_output/tables")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    from pipeline.io.maintenance import local_files, maintain

    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    uri = str(work / "scores")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; local disk; {BATCH} rows per commit", flush=True)
    from pipeline.stages.options import RunOptions

    every = RunOptions().compact_every
    compacted = str(work / "scores_compacted")
    sizes, done, res = (args.n, 4 * args.n, 16 * args.n), 0, {"cpu": cpu_name(), "compact_every": every, "sizes": []}
    for size in sizes:
        lat = grow(uri, size - done, done)
        lat_c = grow(compacted, size - done, done, compact_every=every)
        done = size
        mem, mem_c = driver_memory(uri), driver_memory(compacted)
        last = lat[-max(1, len(lat) // 4):]  # the latency at this size, not averaged over the growth
        last_c = lat_c[-max(1, len(lat_c) // 4):]
        entry = {"commits": size, "rows": size * BATCH, "commit_ms_median": 1000 * statistics.median(last),
                 "commit_ms_p95": 1000 * float(np.quantile(last, 0.95)),
                 "compacted_commit_ms_median": 1000 * statistics.median(last_c), "driver": mem,
                 "driver_compacted": mem_c}
        res["sizes"].append(entry)
        print(f"{size:5d} commits ({size * BATCH:6d} rows): commit {entry['commit_ms_median']:.1f} ms median "
              f"({entry['commit_ms_p95']:.1f} ms p95) without compaction, {entry['compacted_commit_ms_median']:.1f} ms "
              f"compacting every {every}; a driver's start: committed keys read in {mem['read_keys_s']:.3f} s "
              f"({mem_c['read_keys_s']:.3f} s compacted), peak RSS {mem['peak_rss_mb']:.0f} MB "
              f"({mem_c['peak_rss_mb']:.0f} MB compacted; {mem['rss_after_imports_mb']:.0f} MB after imports)",
              flush=True)
    first, last = res["sizes"][0], res["sizes"][-1]
    res["driver_peak_rss_ratio_16n_over_n"] = last["driver"]["peak_rss_mb"] / first["driver"]["peak_rss_mb"]
    res["compacted_driver_peak_rss_ratio_16n_over_n"] = (last["driver_compacted"]["peak_rss_mb"]
                                                         / first["driver_compacted"]["peak_rss_mb"])
    res["commit_latency_ratio_16n_over_n"] = last["commit_ms_median"] / first["commit_ms_median"]
    res["compacted_latency_ratio_16n_over_n"] = last["compacted_commit_ms_median"] / first["compacted_commit_ms_median"]
    commits_1m = CATALOG // BATCH
    res["model_1m"] = {"commits": commits_1m,
                       "commit_hours_serial": commits_1m * last["compacted_commit_ms_median"] / 3.6e6,
                       "data_files_before_compaction": commits_1m, "log_json_files": commits_1m,
                       "checkpoints": commits_1m // 100}
    print(f"driver peak RSS 16N/N x{res['driver_peak_rss_ratio_16n_over_n']:.2f} "
          f"(x{res['compacted_driver_peak_rss_ratio_16n_over_n']:.2f} compacted); commit latency 16N/N "
          f"x{res['commit_latency_ratio_16n_over_n']:.2f} without compaction, "
          f"x{res['compacted_latency_ratio_16n_over_n']:.2f} compacting every {every} commits")
    m = res["model_1m"]
    print(f"1 M videos at {BATCH} per commit: {m['commits']:,} commits, {m['commit_hours_serial']:.2f} h of commits "
          f"if serial at {last['compacted_commit_ms_median']:.1f} ms each; without compaction {m['data_files_before_compaction']:,} "
          f"data files + {m['log_json_files']:,} log entries + {m['checkpoints']:,} checkpoints")
    before = read_seconds(uri)
    files_before = local_files(uri)
    t = time.perf_counter()
    out = maintain(uri, retention_hours=0)
    maint_s = time.perf_counter() - t
    after = read_seconds(uri)
    res["compaction"] = {"files_before": files_before, "files_after": local_files(uri), "seconds": maint_s,
                         "read_before": before, "read_after": after, "maintain": out}
    print(f"read the whole table: {before['all_columns_s']:.3f} s over {files_before} files before compaction, "
          f"{after['all_columns_s']:.3f} s over {local_files(uri)} after (x{before['all_columns_s'] / after['all_columns_s']:.1f}); "
          f"key column {before['key_column_s']:.3f} -> {after['key_column_s']:.3f} s; optimize + vacuum took {maint_s:.1f} s")
    res["concurrent"] = concurrent(str(work / "concurrent"))
    c = res["concurrent"]
    print(f"{c['threads']} concurrent committers, overlapping keys: {c['commits']} commits, {c['rows']} rows = "
          f"{c['distinct_keys']} distinct keys, {c['commits_per_s']:.1f} commits/s, {c['attempts_per_call']:.2f} "
          f"attempts per commit (max {c['max_attempts']})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
