"""Pipeline benchmark (`make bench`): stage throughput, end-to-end overhead, memory, inter-cache effect.

On this machine's local Ray, for the demo set's real clips:
- videos/s of stage 1 (extract-inter) and stage 2 (score, inter cached) for `tiny` and `paper`;
- the score job against the model alone on the same clips in the same run (decode + orchestration
  overhead; 1.0 = no overhead);
- peak memory of the score job (driver + Ray + actors) for N and 4N videos: must not grow with N;
- scoring with the inter cache warm vs cold (the warm run never decodes inter frames nor runs the fast
  pathway; the cold one computes them in the same pass, each video decoded once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]


def _tree_rss(pid: int) -> int:
    """Memory of a process tree: the sum of each process's PSS (its private pages plus its share of shared
    ones). RSS would count the object store's shared memory once per process that maps it: the actors
    read prepared videos zero-copy from it, so a sum of RSS grows with what they touched, not with use."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _run_cli(args: list[str]) -> tuple[float, int, str]:
    """Run `securevqa ...` in a fresh process (its own local Ray); wall time and peak RSS of the tree."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    if proc.returncode:
        raise RuntimeError(f"securevqa {' '.join(args)} failed:\n{out[-4000:]}")
    return time.perf_counter() - t, peak[0], out


def _stage_seconds(out: str, stage: str) -> float:
    """The stage's own time from its summary line (excludes process start and ray.init)."""
    m = re.findall(rf"^{stage}: .* in ([0-9.]+) s$", out, flags=re.M)
    if not m:
        raise RuntimeError(f"no '{stage}' summary line in:\n{out[-2000:]}")
    return float(m[-1])


def _manifest(videos: pd.DataFrame, n: int, path: Path) -> Path:
    rows = pd.concat([videos] * (-(-n // len(videos))), ignore_index=True).head(n).copy()
    # distinct copies so every row is its own video (and its own cache key)
    out_dir = path.parent / f"copies_{n}"
    out_dir.mkdir(parents=True, exist_ok=True)
    uris = []
    for i, uri in enumerate(rows["uri"]):
        dst = out_dir / f"{i:05d}_{Path(uri).name}"
        if not dst.exists():
            os.link(uri, dst) if os.stat(uri).st_dev == os.stat(out_dir).st_dev else dst.write_bytes(Path(uri).read_bytes())
        uris.append(str(dst))
    rows["uri"] = uris
    rows["video_id"] = [Path(u).stem for u in uris]
    rows.to_csv(path, index=False)
    return path


def _model_alone(preset: str, manifest: Path, clips: int) -> float:
    """The model's forwards on the same videos, decoded beforehand, in this process (2 threads)."""
    from model import create_model, make_generator
    from pipeline.stages.inference import inter_segments, intra_clips
    from pipeline.io.video import VideoReader

    vqa, inter = create_model(preset)
    total = 0.0
    for uri in pd.read_csv(manifest)["uri"]:
        g = make_generator(0)
        with VideoReader(uri) as v:
            seg = inter_segments(v, inter)
            cl = intra_clips(v, vqa.cfg.sampling, clips, g)
        with torch.inference_mode():
            emb = inter(seg[None], generator=g)
            t = time.perf_counter()
            vqa(cl[None], emb, generator=g)
            total += time.perf_counter() - t
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=8, help="videos for the tiny runs (4N for the memory check)")
    p.add_argument("--n-paper", type=int, default=4)
    p.add_argument("--work", default="bench_output/pipeline")
    p.add_argument("--memory-only", action="store_true", help="only the memory check at N and 4N")
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    p.add_argument("--no-memory", action="store_true", help="skip the memory check")
    args = p.parse_args(argv)
    from pipeline.demo.build import build_demo_set

    work = Path(args.work).resolve()
    videos = build_demo_set(work / "demo_set")
    results: dict[str, dict] = {}
    common = ["--actors", "1", "--cpus-per-actor", "1", "--threads", "2", "--batch-size", "4", "--seed", "0"]

    runs = [(p, args.n if p == "tiny" else args.n_paper) for p in args.presets]
    for preset, n in () if args.memory_only else runs:
        m = _manifest(videos, n, work / f"manifest_{n}.csv")
        run = work / f"{preset}_{n}_{time.time_ns()}"
        w1, _, out1 = _run_cli(["extract-inter", "--input", str(m), "--cache", str(run / "inter"), "--preset", preset,
                                *common])
        w2, mem, out2 = _run_cli(["score", "--input", str(m), "--cache", str(run / "inter"), "--output",
                                  str(run / "scores"), "--preset", preset, *common])
        _, _, out3 = _run_cli(["score", "--input", str(m), "--cache", str(run / "inter_cold"), "--output",
                               str(run / "scores_cold"), "--preset", preset, *common])
        t1, t2 = _stage_seconds(out1, "extract-inter"), _stage_seconds(out2, "score")
        cold = _stage_seconds(out3, "score")  # one pass: missing embeddings are computed with the scores
        alone = _model_alone(preset, m, 4)
        r = {"videos": n, "extract_inter_s": t1, "extract_inter_videos_per_s": n / t1, "score_s": t2,
             "score_videos_per_s": n / t2, "score_wall_with_startup_s": w2, "model_alone_s": alone,
             "model_over_job": alone / t2, "score_cold_s": cold, "warm_over_cold": t2 / cold,
             "score_peak_rss_mb": mem / 2**20}
        results[preset] = r
        print(f"{preset}: stage 1 {n / t1:.3f} videos/s ({t1:.1f} s for {n}); stage 2 {n / t2:.3f} videos/s "
              f"({t2:.1f} s; {w2:.1f} s with process start and ray.init); model alone {alone:.1f} s -> "
              f"model/job ratio {alone / t2:.2f}; score with inter cached {t2:.1f} s vs cold {cold:.1f} s "
              f"(fast pathway skipped: {t2 / cold:.2f}x the time)")

    mems = {}
    for n in () if args.no_memory else (args.n, 4 * args.n):
        m = _manifest(videos, n, work / f"manifest_{n}.csv")
        run = work / f"mem_{n}_{time.time_ns()}"
        _, mem, _ = _run_cli(["score", "--input", str(m), "--cache", str(run / "inter"), "--output",
                              str(run / "scores"), "--preset", "tiny", *common])
        mems[n] = mem / 2**20
        print(f"score job peak memory, {n} videos: {mems[n]:.0f} MB (driver + Ray + actors)")
    results["memory"] = {str(k): v for k, v in mems.items()}
    out = Path("bench_output/pipeline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
