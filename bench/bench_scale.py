"""Scale benchmark (`make bench`): the pipeline over N, 4N and 16N tiny videos on this machine's Ray.

The videos are 8-frame 64x48 clips and the model the micro test model (tests/helpers/micro.py: every branch
of the architecture, milliseconds per video), so what is measured is the pipeline around the model:
stat and keying in the driver, Ray Data scheduling, actor calls, per-batch commits, reading the
results back. For each N, both stages run in a fresh process (its own local Ray) and report:

- seconds per stage, split by a least-squares line over N, 4N, 16N into a fixed start cost (model
  versions in the driver, actor start) and a marginal cost per video; the marginal throughput between
  consecutive sizes (delta videos / delta seconds) must stay flat;
- the orchestration overhead per video: stage seconds x actors minus the decode and model seconds the
  actors recorded, over N (the fixed start included, so an upper bound that falls as N grows);
- the steady rate between the first and the last commit (the Delta log's commit timestamps): the
  stage's throughput without its start, which must not fall as N grows;
- peak RSS of the job's whole process tree (driver, Ray, actors), sampled every 0.2 s;
- the driver's time to read a finished output's committed keys (the "what is done" check every
  re-run starts with), which grows with the number of commits until the table is compacted
  (bench/bench_tables.py measures the tables themselves).

Flat throughput, overhead and memory across N, 4N, 16N is the claim; the ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from bench.bench_pipeline import _run_cli, _stage_seconds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers: the test videos and the micro model


def make_videos(work: Path, n: int) -> Path:
    """n distinct files (hard links of one clip get one content key each: size + mtime + path)."""
    from tests.helpers import videos as V

    src = work / "clip.mp4"
    if not src.exists():
        V.write_video(src, num_frames=8, width=64, height=48)
    d = work / f"videos_{n}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    uris = []
    for i in range(n):
        dst = d / f"v{i:06d}.mp4"
        shutil.copyfile(src, dst)
        uris.append(str(dst))
    manifest = work / f"manifest_{n}.csv"
    pd.DataFrame({"video_id": [Path(u).stem for u in uris], "uri": uris}).to_csv(manifest, index=False)
    return manifest


def run_once(work: Path, n: int, checkpoint: Path, batch: int, actors: int) -> dict:
    from pipeline.stages.driver import load_table
    from pipeline.io.table import KeyedTable

    manifest = make_videos(work, n)
    run = work / f"run_{n}_{time.time_ns()}"
    common = ["--checkpoint", str(checkpoint), "--actors", str(actors), "--cpus-per-actor", "1", "--threads", "1",
              "--batch-size", str(batch), "--seed", "0"]
    wall, peak, out = _run_cli(["score", "--input", str(manifest), "--cache", str(run / "inter"),
                                "--output", str(run / "scores"), *common])
    s1, s2 = _stage_seconds(out, "extract-inter"), _stage_seconds(out, "score")
    inter, scores = load_table(str(run / "inter")), load_table(str(run / "scores"))
    assert len(scores) == n and (scores["status"] == "ok").all(), "every video scored once"
    work1 = float((inter["decode_s"] + inter["model_s"]).sum())
    work2 = float((scores["decode_s"] + scores["model_s"]).sum())
    t = time.perf_counter()
    KeyedTable(str(run / "scores")).committed_keys()
    list_s = time.perf_counter() - t
    commits = sum(1 for h in KeyedTable(str(run / "scores")).history() if "securevqa.keys" in h)
    steady1, steady2 = _steady_rate(KeyedTable(str(run / "inter"))), _steady_rate(KeyedTable(str(run / "scores")))
    shutil.rmtree(manifest.parent / f"videos_{n}")
    return {
        "videos": n, "commits_per_stage": commits, "extract_inter_s": s1, "score_s": s2, "job_wall_s": wall,
        "extract_inter_videos_per_s": n / s1, "score_videos_per_s": n / s2,
        "extract_inter_overhead_ms_per_video": 1000 * (s1 * actors - work1) / n,
        "score_overhead_ms_per_video": 1000 * (s2 * actors - work2) / n,
        "extract_inter_work_ms_per_video": 1000 * work1 / n, "score_work_ms_per_video": 1000 * work2 / n,
        "peak_rss_mb": peak / 2**20, "read_keys_s": list_s,
        "extract_inter_steady_videos_per_s": steady1, "score_steady_videos_per_s": steady2,
    }


def _steady_rate(table) -> float:
    """Videos per second between the first and the last commit (the log's commit timestamps, ms): the
    stage's rate once running, without its fixed start."""
    t = sorted((h["timestamp"], len(json.loads(h["securevqa.keys"]))) for h in table.history() if "securevqa.keys" in h)
    if len(t) < 2 or t[-1][0] == t[0][0]:
        return float("nan")  # one commit: no interval to measure (use a larger N)
    return sum(n for _, n in t[1:]) / ((t[-1][0] - t[0][0]) / 1e3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=250, help="N: runs at N, 4N and 16N videos")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="runs per N (medians are reported)")
    p.add_argument("--work", default="bench_output/scale")
    args = p.parse_args(argv)
    from tests.helpers.micro import micro_checkpoint

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt = micro_checkpoint(work / "micro.pt")
    results = []
    for n in (args.n, 4 * args.n, 16 * args.n):
        runs = [run_once(work, n, ckpt, args.batch_size, args.actors) for _ in range(args.repeats)]
        r = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        r.update(videos=n, commits_per_stage=runs[0]["commits_per_stage"])
        results.append(r)
        print(f"N={n:6d}: stage 1 {r['extract_inter_videos_per_s']:6.1f} videos/s, stage 2 "
              f"{r['score_videos_per_s']:6.1f} videos/s (steady, first to last commit: "
              f"{r['extract_inter_steady_videos_per_s']:.1f} / {r['score_steady_videos_per_s']:.1f}); overhead per video {r['extract_inter_overhead_ms_per_video']:.1f}"
              f" / {r['score_overhead_ms_per_video']:.1f} ms (work {r['extract_inter_work_ms_per_video']:.1f} / "
              f"{r['score_work_ms_per_video']:.1f} ms); peak RSS {r['peak_rss_mb']:.0f} MB; "
              f"{r['commits_per_stage']} commits; committed keys read in {r['read_keys_s']:.2f} s", flush=True)
    summary = {}
    for stage, key in (("extract-inter", "extract_inter"), ("score", "score")):
        xs, ys = [r["videos"] for r in results], [r[f"{key}_s"] for r in results]
        slope, fixed = _line(xs, ys)
        work = statistics.mean(r[f"{key}_work_ms_per_video"] for r in results) / 1000
        steps = [(x2 - x1) / (y2 - y1) for x1, x2, y1, y2 in zip(xs, xs[1:], ys, ys[1:])]
        last = results[-1]
        summary[stage] = {"fixed_s": fixed, "marginal_ms_per_video": 1000 * slope,
                          "fit_videos_per_s": 1 / slope, "work_ms_per_video": 1000 * work,
                          "overhead_ms_per_video_at_16n": last[f"{key}_overhead_ms_per_video"],
                          "marginal_videos_per_s_between_sizes": steps, "flatness": steps[-1] / steps[0]}
        print(f"{stage}: fixed {fixed:.1f} s + {1000 * slope:.1f} ms per video ({1 / slope:.1f} videos/s by the line); "
              f"marginal videos/s {' -> '.join(f'{v:.1f}' for v in steps)} (last/first x{steps[-1] / steps[0]:.2f}); "
              f"overhead at {last['videos']} videos, start included: {last[f'{key}_overhead_ms_per_video']:.1f} ms "
              f"per video beside {last[f'{key}_work_ms_per_video']:.1f} ms of decode + model")
    for stage, key in (("extract-inter", "extract_inter"), ("score", "score")):
        steady = [r[f"{key}_steady_videos_per_s"] for r in results]
        summary[stage]["steady_videos_per_s"] = steady
        summary[stage]["steady_flatness"] = steady[-1] / steady[0]
        print(f"{stage}: steady videos/s (first to last commit) {' -> '.join(f'{v:.1f}' for v in steady)} "
              f"(16N/N x{steady[-1] / steady[0]:.2f})")
    mem = [r["peak_rss_mb"] for r in results]
    summary["peak_rss_mb"] = mem
    summary["memory_growth"] = mem[-1] / mem[0]
    print(f"peak memory {' -> '.join(f'{m:.0f}' for m in mem)} MB (16N/N x{mem[-1] / mem[0]:.2f})")
    results = {"runs": results, "summary": summary, "actors": args.actors, "batch_size": args.batch_size}
    out = Path("bench_output/scale.json")
    out.write_text(json.dumps(results, indent=2))
    plot(results["runs"], Path("bench_output/scale.png"))
    print(f"wrote {out} and bench_output/scale.png")


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["videos"] for r in results]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(n, [r["extract_inter_videos_per_s"] for r in results], "o-", label="stage 1 (extract-inter)")
    ax[0].plot(n, [r["score_videos_per_s"] for r in results], "s-", label="stage 2 (score)")
    ax[0].plot(n, [r["extract_inter_steady_videos_per_s"] for r in results], "o--", color="C0", alpha=0.6,
               label="stage 1, steady")
    ax[0].plot(n, [r["score_steady_videos_per_s"] for r in results], "s--", color="C1", alpha=0.6,
               label="stage 2, steady")
    ax[0].set(title="throughput (solid: incl. start)", ylabel="videos / s", ylim=(0, None))
    ax[1].plot(n, [r["extract_inter_overhead_ms_per_video"] for r in results], "o-", label="stage 1")
    ax[1].plot(n, [r["score_overhead_ms_per_video"] for r in results], "s-", label="stage 2")
    ax[1].set(title="orchestration overhead (incl. start)", ylabel="ms / video", ylim=(0, None))
    ax[2].plot(n, [r["peak_rss_mb"] for r in results], "o-")
    ax[2].set(title="peak memory (driver + Ray + actors)", ylabel="MB", ylim=(0, None))
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("videos in the run")
        a.set_xticks(n, [str(x) for x in n])
        a.minorticks_off()
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    fig.suptitle("SecureVQA pipeline at N, 4N, 16N tiny videos (micro model, local Ray, 2 CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
