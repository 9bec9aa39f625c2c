"""`securevqa`: one command line for every job. Parses arguments and calls the pipeline, nothing more.

    securevqa extract-inter --input IN --cache URI
    securevqa score   --input IN --cache URI --output URI
    securevqa report  --scores URI --output URI
    securevqa rescore --input IN --state URI
    securevqa train   --input IN --output URI [--val IN | --protocol splits]
    securevqa attack  --input IN --output URI [--defenses ...] [--attack SPEC ...]
    securevqa weights [--json]     the named weights that --weights NAME loads (model/registry.py)
    securevqa average CK CK ... --output CK [--shares A,B,...]   weight average of one lineage's runs
    securevqa vacuum  URI [--retention-hours H]   compact a table's files, delete what no version needs
    securevqa migrate URI          convert a shard store (before the Delta format) into a Delta table

IN is a manifest (CSV, Parquet, JSON lines; a `uri` column, optional `video_id`, `mos`, `dataset`)
or a directory or glob of videos; every URI may be local or s3://. On a cluster:
`ray job submit --working-dir . -- python -m jobs.score --input s3://... --cache s3://... --output s3://...`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

log = logging.getLogger("securevqa")


def _storage_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in args.storage_option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--storage-option expects KEY=VALUE, got {item!r}")
        opts[key] = value
    if args.endpoint_url:
        opts["endpoint_url"] = args.endpoint_url
    return opts


def _add_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                   help="per-run fsspec/S3 option (endpoint_url, profile, region, key, secret, ...); repeatable")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="debug lines, and Ray's own INFO lines")
    loud.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (the summary still prints)")


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", help="SecureVQA checkpoint (ours or the reference layout), path or URI")
    g.add_argument("--weights", type=_weights_name, metavar="NAME",
                   help="registered weights (`securevqa weights` lists them), checked against their sha256; "
                   "instead of --checkpoint and --preset")
    g.add_argument("--inter-checkpoint", help="pytorchvideo SLOWFAST_8x8_R50.pyth for the fast pathway")
    g.add_argument("--preset", type=_preset,
                   help="paper, tiny or tiny-cpu (model/config.py PRESETS): architecture (default: the checkpoint's own, 'paper' for reference checkpoints; with neither, "
                   "the default named weights: `securevqa weights`)")
    g.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="fp32 (default) or bf16: autocast on GPUs, bf16 matmul weights on CPUs; auto: per model, "
                   "whichever a start-up calibration on this CPU type measures faster (cached; docs/capacity.md)")
    g.add_argument("--device", help="auto (default: the actor's GPU if torch sees one, else CPU), cpu, cuda")
    g.add_argument("--no-guardian", action="store_true", help="disable the guardian map (ablations only)")
    r = p.add_argument_group("run")
    r.add_argument("--actors", type=int, help="actor pool size (default: one per GPU, else one per 2 CPUs)")
    r.add_argument("--batch-size", type=int, help="videos per actor call and per committed shard (default 8)")
    r.add_argument("--gpus-per-actor", type=float, help="default 1 / --actors-per-gpu where the cluster has GPUs, else 0")
    r.add_argument("--actors-per-gpu", type=_actors_per_gpu, metavar="N|auto",
                   help="actors sharing each GPU, so decoding overlaps forward passes (default 1); auto: from the "
                   "decode and model times of the output's earlier rows and the cluster's CPUs per GPU")
    r.add_argument("--forward-videos", type=_positive_int,
                   help="videos whose clips go through one forward pass (default: the whole batch on a GPU, 1 on CPU)")
    r.add_argument("--cpus-per-actor", type=float, help="logical CPUs Ray reserves per actor (default 1)")
    r.add_argument("--threads", type=int, help="torch threads per actor (default: --cpus-per-actor)")
    r.add_argument("--prepare-cpus", type=float, help="logical CPUs per preparation task (decode and cut; default 1)")
    r.add_argument("--prepared-buffer-mb", type=int, help="object-store memory prepared videos may fill while they "
                   "wait for the model (default 1024): the preparation pauses beyond it")
    r.add_argument("--clips", type=int, help="intra clips per video (default: the preset's 4)")
    r.add_argument("--seed", type=int, help="replay guardian maps and offsets (default: fresh randomness)")
    r.add_argument("--retry-errors", action="store_true", help="recompute videos that failed last time")
    r.add_argument("--limit", type=int, help="only the first N videos of the input")
    r.add_argument("--stream", type=_stream_index, metavar="K",
                   help="read video stream K of every file, numbered as ffprobe numbers streams (default: the "
                   "default moving video stream, never cover art; the row's `stream` column says which was read)")
    r.add_argument("--progress-seconds", type=float,
                   help="seconds between progress lines (done, failed, rate, time left) of a running stage (default 60)")
    r.add_argument("--compact-every", type=int, metavar="N",
                   help="compact the output table every N commits while a stage runs, 0 never (default 100; "
                   "docs/tables.md)")
    r.add_argument("--ray-address", help=RAY_ADDRESS_HELP)


def _preset(name: str) -> str:
    """A preset of model/config.py (imported only when the flag is given: it loads torch)."""
    from model.config import PRESETS

    if name not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return name


def _recipe(name: str) -> str:
    """A named TrainConfig of pipeline/training/config.py RECIPES."""
    from pipeline.training.config import RECIPES

    if name not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return name


def _depths(text: str) -> tuple[int, ...]:
    """Swin blocks per stage, comma-separated positive integers ("1,1,4,2")."""
    try:
        depths = tuple(int(x) for x in text.split(","))
    except ValueError:
        depths = ()
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"expected blocks per stage such as 1,1,4,2, got {text!r}")
    return depths


def _weights_name(name: str) -> str:
    """A registered and installed entry of model/registry.py."""
    from model.registry import get_weights

    try:
        w = get_weights(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if w.installed is False:
        raise argparse.ArgumentTypeError(f"weights {name!r} are not installed (no {w.location}; `securevqa weights`)")
    return name


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return n


def _stream_index(value: str) -> int:
    try:
        k = int(value)
    except ValueError:
        k = -1
    if k < 0:
        raise argparse.ArgumentTypeError(f"expected a stream index >= 0, got {value!r}")
    return k


def _actors_per_gpu(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return _positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {value!r}") from None


def spec_and_options(args: argparse.Namespace, so: dict[str, Any]) -> tuple[Any, Any]:
    """ModelSpec and RunOptions from the model and run arguments every Ray job shares."""
    from pipeline.stages.options import ModelSpec, RunOptions

    try:
        spec = ModelSpec(**_given(preset=args.preset, checkpoint=args.checkpoint, inter_checkpoint=args.inter_checkpoint,
                                  precision=args.precision, device=args.device, weights=args.weights),
                         guardian=not args.no_guardian)
    except ValueError as e:  # --weights with --checkpoint or --preset
        raise SystemExit(f"securevqa: error: {e}") from None
    opts = RunOptions(storage_options=so, retry_errors=args.retry_errors,
                      **_given(actors=args.actors, batch_size=args.batch_size, gpus_per_actor=args.gpus_per_actor,
                               actors_per_gpu=args.actors_per_gpu, forward_videos=args.forward_videos,
                               cpus_per_actor=args.cpus_per_actor, threads=args.threads, clips=args.clips,
                               seed=args.seed, progress_s=args.progress_seconds, stream=args.stream,
                               compact_every=args.compact_every, prepare_cpus=args.prepare_cpus,
                               prepared_buffer_mb=args.prepared_buffer_mb))
    return spec, opts


def _table_version(text: str) -> int | str:
    """--as-of/--compare-to: a table version (digits) or an ISO 8601 time (a date alone means 00:00 UTC)."""
    if text.isdigit():
        return int(text)
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a version number nor an ISO 8601 time") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat()


def _versioned(load: Any, uri: str, so: dict[str, Any], at: int | str | None) -> tuple[str, Any]:
    """(label, table) of `uri` at a version or time (None: the latest)."""
    if at is None:
        df = load(uri, so)
        v = df.attrs.get("table_version")
        return ("latest" if v is None else f"version {v} (latest)"), df
    if isinstance(at, int):
        return f"version {at}", load(uri, so, version=at)
    df = load(uri, so, as_of=at)
    return f"{at} (version {df.attrs.get('table_version')})", df


def _given(**values: Any) -> dict[str, Any]:
    """The options the user passed (not None): the library's dataclasses hold every default, once."""
    return {k: v for k, v in values.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securevqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract-inter", help="stage 1: cache inter (fast pathway) embeddings (a Delta table)")
    p.add_argument("--input", required=True)
    p.add_argument("--cache", required=True)
    _add_model(p)
    _add_io(p)
    p = sub.add_parser("score", help="stage 2: score videos (computes missing inter embeddings on the way)")
    p.add_argument("--input", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--no-compute-inter", action="store_true",
                   help="do not compute missing inter embeddings: such videos get status error")
    _add_model(p)
    _add_io(p)
    p = sub.add_parser("report", help="dataset-level figures, Markdown report and plots from a score table")
    p.add_argument("--scores", required=True, help="a score table: Delta table, Parquet folder or file")
    p.add_argument("--output", required=True)
    p.add_argument("--as-of", type=_table_version, metavar="VERSION|TIME",
                   help="report the Delta table as it was: a version number or an ISO 8601 time, e.g. 2026-11-29 "
                   "or 2026-11-29T03:00:00Z (default: the latest version)")
    p.add_argument("--compare-to", type=_table_version, metavar="VERSION|TIME",
                   help="add what changed since this version or time: videos new, dropped, changed, by how much")
    _add_io(p)
    p = sub.add_parser("rescore", help="nightly: score only new or changed videos, publish the full table")
    p.add_argument("--input", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--history-days", type=_positive_int,
                   help="how long earlier nights of the catalog table stay readable (default 30)")
    p.add_argument("--no-maintenance", action="store_true",
                   help="skip compacting and vacuuming the state's tables at the end (docs/tables.md)")
    _add_model(p)
    _add_io(p)
    p = sub.add_parser("vacuum", help="table maintenance: compact small files (optimize), then delete files no "
                       "version within the retention needs, uncommitted ones included (vacuum)")
    p.add_argument("tables", nargs="+", metavar="URI", help="Delta tables (an output, a cache, a catalog table)")
    p.add_argument("--retention-hours", type=int, metavar="H",
                   help="keep files younger than H hours (default: the table's own retention, 7 days; below 168 "
                   "time travel further back than H hours breaks)")
    p.add_argument("--no-optimize", action="store_true", help="vacuum only")
    p.add_argument("--dry-run", action="store_true", help="list what vacuum would delete; change nothing")
    _add_io(p)
    p = sub.add_parser("migrate", help="convert shard stores written before the Delta format into Delta tables, "
                       "in place (same rows, keys and columns)")
    p.add_argument("tables", nargs="+", metavar="URI")
    p.add_argument("--dry-run", action="store_true", help="count the rows and files; change nothing")
    _add_io(p)
    _add_train(sub)
    _add_attack(sub)
    p = sub.add_parser("average", help="average the weights of checkpoints fine-tuned from one start (a model soup; "
                       "docs/training.md, 'Weight averaging')",
                       description="Write the weighted mean of the trained weights (intra backbone, fusion, head) of "
                       "checkpoints fine-tuned from one start: same architecture and the same fast pathway, which is "
                       "checked (each fusion learned on its own inter embeddings). The output records its sources "
                       "and shares; choose the shares on validation data (docs/training.md, 'Weight averaging').")
    p.add_argument("checkpoints", nargs="+", help="our-format checkpoints (best.pt of runs of one lineage), paths or URIs")
    p.add_argument("--output", required=True, help="where the averaged checkpoint is written")
    p.add_argument("--shares", type=_shares, metavar="A,B,...",
                   help="each checkpoint's share, >= 0, scaled to sum to 1 (default: uniform)")
    _add_io(p)
    p = sub.add_parser("weights", help="list the registered weights (--weights NAME): preset, installed?, sha256, "
                       "metrics, recipe")
    p.add_argument("--json", action="store_true", help="every field of every entry, as JSON")
    return parser


def _shares(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _average(args: argparse.Namespace, so: dict[str, Any]) -> int:
    from model.api import average_weights

    try:
        meta = average_weights(args.checkpoints, args.output, args.shares, storage_options=so)
    except ValueError as e:
        print(f"securevqa average: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"output": args.output, **meta["average"]}))
    return 0


def _list_weights(args: argparse.Namespace) -> int:
    from model.registry import (
        DEFAULT_WEIGHTS,
        UNTRAINED_PRESET,
        list_weights,
        weights_table,
    )

    if args.json:
        print(json.dumps([{**w.to_dict(), "location": w.location, "status": w.status} for w in list_weights()],
                         indent=2))
    else:
        print(weights_table())
        for w in list_weights():  # what the figures mean (set, bar) is in each entry's notes
            if w.installed and w.notes:
                print(f"{w.name}: {w.notes}")
        print(f"default (no --checkpoint, --preset or --weights): {DEFAULT_WEIGHTS!r} where installed, else "
              f"the {UNTRAINED_PRESET!r} preset UNTRAINED")
    return 0


def _add_attack(sub: Any) -> None:
    p = sub.add_parser(
        "attack", help="security evaluation: attack a labelled set under defense configurations (docs/design.md §3)",
        description="Attack the first --max-videos labelled videos under each defense configuration with each attack; "
        "per-video results (Parquet), summary.md/csv/json shaped like the paper's Tables I/II and V/VI, and "
        "clean_vs_adv.png in --output. Resumable: a re-run computes only what is missing.")
    p.add_argument("--input", required=True, help="labelled manifest (uri, mos[, video_id, dataset])")
    p.add_argument("--output", required=True, help="output root (local or s3://)")
    p.add_argument("--defenses", nargs="+", default=["none", "securevqa"], metavar="CONFIG",
                   help="defense configurations: securevqa (all on), none (undefended baseline), or '+'-joined "
                   "switches from guardian, grid, inter; '@N' averages N guardian-map draws per score "
                   "(default: none securevqa)")
    p.add_argument("--ablation", action="store_true",
                   help="the ablation: none, each defense alone, and securevqa (replaces --defenses)")
    p.add_argument("--attack", action="append", metavar="SPEC",
                   help="repeatable; 'black-box[:gamma=5,repeats=1]' or 'white-box[:norm=l2|linf,eps=1,eot=1,"
                   "objective=frame|video,steps=30,lr=0.003]', or 'none' (the control: no perturbation, fresh draws); "
                   "gamma and eps in 8-bit levels (default: black-box)")
    p.add_argument("--max-videos", type=int, default=50, help="attack the first N labelled videos (paper: 50)")
    p.add_argument("--max-frames", type=int, help="attack and score only the first N frames of each video")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    _add_model(p)
    _add_io(p)
    p.set_defaults(batch_size=1)  # a video's attack takes minutes: commit (and report) each one


def _attack(args: argparse.Namespace, so: dict[str, Any]) -> int:
    from model.security.attacks import AttackSpec
    from model.security.defense import ABLATION, Defenses
    from pipeline.io.manifest import read_manifest
    from pipeline.security.attack import AttackPlan, run_attacks

    try:
        defenses = ABLATION if args.ablation else tuple(Defenses.parse(d) for d in args.defenses)
        attacks = tuple(AttackSpec.parse(a) for a in (args.attack or ["black-box"]))
        plan = AttackPlan(defenses=defenses, attacks=attacks, max_videos=args.max_videos,
                          max_frames=args.max_frames, n_boot=args.n_boot)
    except ValueError as e:
        raise SystemExit(f"securevqa attack: {e}") from None
    spec, opts = spec_and_options(args, so)
    manifest = read_manifest(args.input, so)
    if args.limit:
        manifest = manifest.head(args.limit)
    _warn_untrained(spec)
    _init_ray(args.ray_address)
    print(f"attack: {len(defenses)} defense configuration(s) x {len(attacks)} attack(s): "
          f"{', '.join(d.name for d in defenses)} | {', '.join(a.name for a in attacks)}")
    for line in run_attacks(manifest, args.output, spec, plan, opts).lines():
        print(line)
    return 0


def _warn_untrained(spec: Any) -> None:
    from model.registry import UNTRAINED_PRESET

    if spec.checkpoint is None and spec.weights_name is None:
        log.warning("no --checkpoint and no installed demo model: scores come from an UNTRAINED %s model",
                    spec.preset or UNTRAINED_PRESET)
    elif spec.default_weights:
        log.info("no --checkpoint: the shipped demo model (%s: tiny-cpu, trained on package-shipped content; "
                 "docs/training.md says what it is not good for)", spec.weights_name)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train SecureVQA on cached inter embeddings (Ray Train, DDP)",
                       description="Train SecureVQA. Defaults are the reference recipe (docs/design.md §2.4); with "
                       "--protocol splits, the small-dataset protocol (10 random 80/20 splits, backbone frozen, "
                       "head and fusion re-initialised, 10 epochs, batch 16, mean and std over splits).")
    p.add_argument("--input", required=True,
                   help="labelled manifest (uri, mos[, video_id, dataset, split]) or, with --dataset, a label file")
    p.add_argument("--output", required=True, help="run directory (local or s3://): checkpoints, best.pt, history")
    p.add_argument("--val", help="validation manifest or label file (default: the input's rows with split 'val')")
    p.add_argument("--dataset", help="read --input/--val as this dataset's label file: lsvq, konvid1k, livevqc, "
                   "youtube_ugc, csv")
    p.add_argument("--videos", help="with --dataset: the folder or URI prefix holding the videos")
    p.add_argument("--protocol", choices=["standard", "splits"], default="standard")
    p.add_argument("--recipe", type=_recipe, metavar="NAME",
                   help="the TrainConfig the other options change (pipeline/training/config.py RECIPES; default: "
                   "reference, or splits with --protocol splits; demo: the shipped demo model's)")
    p.add_argument("--n-splits", type=int, default=10, help="--protocol splits: number of random splits")
    p.add_argument("--train-fraction", type=float, default=0.8, help="--protocol splits: training share")
    g = p.add_argument_group("model")
    g.add_argument("--preset", type=_preset, help="paper (default), tiny or tiny-cpu (model/config.py PRESETS)")
    g.add_argument("--init", help="start from this SecureVQA checkpoint (ours or the reference layout)")
    g.add_argument("--intra-pretrained", help="Video Swin K400 weights (mmaction .pth) for the intra backbone")
    g.add_argument("--inter-checkpoint", help="SlowFast R50 K400 weights (pytorchvideo .pyth) for the fast pathway")
    g.add_argument("--no-guardian", action="store_true", help="train without guardian maps (ablations only)")
    g.add_argument("--deepen", type=_depths, metavar="D1,D2,D3,D4",
                   help="Swin blocks per stage after loading --init (model/deepen.py): the appended blocks start "
                   "as the identity, so the deeper model scores as the loaded one did and grows from there")
    r = p.add_argument_group("recipe (defaults: docs/design.md §2.4; --protocol splits changes epochs, batch, freezing)")
    r.add_argument("--epochs", type=int)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--head-lr", type=float)
    r.add_argument("--backbone-lr", type=float)
    r.add_argument("--weight-decay", type=float)
    r.add_argument("--warmup-epochs", type=float)
    r.add_argument("--ema-decay", type=float)
    r.add_argument("--loss", choices=["reference", "srcc", "margin"],
                   help="reference: PLCC + 0.3 rank loss (reference code); srcc: PLCC + differentiable SRCC (paper); "
                   "margin: pairwise hinge on raw scores, --margin per label unit (trains a random init on a CPU)")
    r.add_argument("--margin", type=float, help="--loss margin: score gap asked per unit of label (default 0.1)")
    r.add_argument("--freeze-backbone", action="store_true", default=None)
    r.add_argument("--head-dropout", type=float, help="dropout of the head while training (default: the preset's 0.5)")
    r.add_argument("--reinit-head", action="store_true", default=None)
    r.add_argument("--group-by", help="batches of --group-size clips per value of this column (e.g. source): "
                   "the losses rank within a batch, so same-content clips isolate quality from content")
    r.add_argument("--group-size", type=int, help="clips per group in a batch (default 4)")
    r.add_argument("--align-groups", action="store_true",
                   help="with --group-by: a group's clips in a batch share clip offsets and fragment positions "
                   "(versions of one source then differ in quality only)")
    r.add_argument("--rank-zscore", action="store_true",
                   help="rank term on z-scored predictions (scale-free; the reference ranks raw scores)")
    r.add_argument("--batch-weight", type=float,
                   help="with --group-by: weight of the whole-batch loss beside the per-group losses (default 0.1)")
    r.add_argument("--batch-loss", choices=("reference", "srcc", "margin"),
                   help="with --group-by: the whole-batch loss's kind (default: --loss's); 'reference' (PLCC + rank) "
                        "asks contents for one score scale, where the margin hinge lets tied labels sit at any offset")
    r.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value")
    r.add_argument("--calibrate-inter", type=int, metavar="N",
                   help="estimate the frozen fast pathway's BatchNorm statistics on N training videos "
                   "(a randomly initialised pathway; never with pretrained SlowFast weights)")
    r.add_argument("--difference-stem", type=int, metavar="N",
                   help="with --calibrate-inter: make N of the fast pathway's stem channels temporal-difference "
                   "filters (the last N; tiny-cpu's stem has 4), so the "
                   "inter branch sees frame holds, and start the fusion blind to the new embedding (once, when "
                   "switching; docs/training.md)")
    r.add_argument("--texture-weight", type=float,
                   help="weight of the texture-statistics target on the final intra tokens (model/pretext.py): "
                   "teaches a randomly initialised Swin to measure local energy (docs/training.md)")
    r.add_argument("--fidelity-weight", type=float,
                   help="weight of the fidelity target (model/pretext.py): the final intra tokens also regress "
                   "their cells' SSIM and log MSE against the clean version named by the manifest's `reference` "
                   "column (docs/training.md, run E)")
    r.add_argument("--condition-weight", type=float,
                   help="weight of the condition target (model/pretext.py): the pooled intra features also name "
                   "each video's processing condition, the manifest's --condition-column (docs/training.md)")
    r.add_argument("--condition-column", help="manifest column naming each video's condition (default: condition)")
    r.add_argument("--repeat-weight", type=float,
                   help="weight of the frame-repeat ranking target: some clips of each batch are also scored with "
                   "their frames held as the recipe's frame-rate drops, and must score lower by the labels' "
                   "drops (TrainConfig.repeat_weight; the demo recipe's levels are fps k 2 and 4)")
    r.add_argument("--repeat-clips", type=int, help="with --repeat-weight: videos of each batch that get held "
                   "versions (default 2)")
    r.add_argument("--repeat-phase", type=int, metavar="P",
                   help="with --repeat-weight: hold frames from clip frame P (0: as in the test clips of 64-frame "
                   "videos; default: a phase drawn per clip)")
    r.add_argument("--repeat-inter", action="store_true",
                   help="with --repeat-weight: the held clips also get their videos' inter segments held and embedded "
                   "(from the frame cache, or decoded, each step), so the target reaches the inter branch; use with --difference-stem")
    r.add_argument("--repeat-pairs", choices=("all", "held"),
                   help="with --repeat-weight: 'all' ranks each clip above its held versions and those by their "
                   "drops (default); 'held' only the held versions among themselves (fps k 2 above k 4)")
    r.add_argument("--val-clips", type=int, help="clips per validation video (default: the preset's 4)")
    r.add_argument("--seed", type=int, help="replay a run (default: drawn at start and recorded in history.json)")
    x = p.add_argument_group("run")
    x.add_argument("--workers", type=int, help="Ray Train workers (DDP when > 1; default 1)")
    x.add_argument("--gpu", dest="use_gpu", action="store_true", default=None, help="one GPU per worker")
    x.add_argument("--cpus-per-worker", type=float, help="logical CPUs Ray reserves per worker (default 1)")
    x.add_argument("--threads", type=int, help="torch threads per worker (default: --cpus-per-worker)")
    x.add_argument("--loader-workers", type=int, help="clip-decoding processes per worker (default 1)")
    x.add_argument("--frame-cache", help="local folder where each training video is decoded once (default: "
                   "decode the sampled frames every step)")
    x.add_argument("--cache", help="stage-1 inter cache (default: OUTPUT/inter); share it with the score job")
    x.add_argument("--limit", type=int, help="only the first N videos of the input")
    x.add_argument("--ray-address", help=RAY_ADDRESS_HELP)
    _add_io(p)


def _read_input(spec: str, args: argparse.Namespace, so: dict[str, Any]) -> Any:
    if args.dataset:
        from pipeline.training.datasets import read_labels

        if not args.videos:
            raise SystemExit("--dataset needs --videos (where the videos are)")
        return read_labels(args.dataset, spec, args.videos, storage_options=so)
    from pipeline.io.manifest import read_manifest

    return read_manifest(spec, so)


def train_config(args: argparse.Namespace, so: dict[str, Any]) -> tuple[Any, Any]:
    """TrainConfig and TrainRun from `securevqa train` arguments: the library's defaults (the reference
    recipe, or the small-dataset protocol's with --protocol splits) with what the user passed on top."""
    from pipeline.training.config import RECIPES, TrainRun

    splits = args.protocol == "splits"
    base = RECIPES[args.recipe or ("splits" if splits else "reference")]
    loss = dataclasses.replace(base.loss, **_given(kind=args.loss, batch_weight=args.batch_weight, margin=args.margin,
                                                   batch_kind=args.batch_loss),
                               **({"rank_zscore": True} if args.rank_zscore else {}))
    given = _given(
        preset=args.preset, init_checkpoint=args.init, intra_pretrained=args.intra_pretrained,
        inter_checkpoint=args.inter_checkpoint, epochs=args.epochs, batch_size=args.batch_size, head_lr=args.head_lr,
        backbone_lr=args.backbone_lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        ema_decay=args.ema_decay, grad_clip=args.grad_clip, calibrate_inter=args.calibrate_inter,
        difference_stem=args.difference_stem,
        texture_weight=args.texture_weight, fidelity_weight=args.fidelity_weight,
        condition_weight=args.condition_weight, condition_column=args.condition_column,
        repeat_weight=args.repeat_weight, repeat_clips=args.repeat_clips, repeat_phase=args.repeat_phase,
        repeat_inter=args.repeat_inter or None, repeat_pairs=args.repeat_pairs,
        freeze_backbone=args.freeze_backbone, reinit_head=args.reinit_head,
        val_clips=args.val_clips, group_column=args.group_by, group_size=args.group_size,
        head_dropout=args.head_dropout, seed=args.seed, align_groups=args.align_groups or None,
        guardian=False if args.no_guardian else None, deepen=args.deepen)
    cfg = dataclasses.replace(base, loss=loss, **given)
    run = TrainRun(storage_options=so, **_given(
        workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker, threads=args.threads,
        loader_workers=args.loader_workers, cache_uri=args.cache, frame_cache=args.frame_cache))
    return cfg, run


def _train(args: argparse.Namespace, so: dict[str, Any]) -> int:
    from pipeline.training.run import train, train_splits

    splits = args.protocol == "splits"
    cfg, run = train_config(args, so)
    data = _read_input(args.input, args, so)
    if args.limit:
        data = data.head(args.limit)
    val = _read_input(args.val, args, so) if args.val else None
    if val is None and not splits and "split" in data and (data["split"] == "val").any():
        data, val = data[data["split"] == "train"], data[data["split"] == "val"]
    _init_ray(args.ray_address)
    if splits:
        summary = train_splits(data, args.output, cfg, run, n_splits=args.n_splits,
                               train_fraction=args.train_fraction)
        print(summary["line"])
        return 0
    if val is None:
        log.warning("no validation set (--val, or split 'val' rows): best.pt is the last epoch's raw weights")
    history = train(data, args.output, cfg, run, val=val)
    best = history.get("best") or {}
    trained = sum(1 for e in history["epochs"] if e["epoch"] > 0)  # epoch 0 is the validation before training
    print(f"train: done, {trained} epochs; best: epoch {best.get('epoch')} ({best.get('weights')} "
          f"weights), val SRCC {best.get('val_srcc')}; model -> {args.output.rstrip('/')}/best.pt")
    return 0


# Ray's own rule (ray.init): without an address it joins a Ray already running on this machine (the latest started,
# whoever started it: `ray start`, another job), else starts one. A head node's users expect the former.
RAY_ADDRESS_HELP = ("Ray cluster to join: host:port, ray://host:port, 'auto' (a Ray already running on this machine) "
                    "or 'local' (a new one of this command's own); default: RAY_ADDRESS, else a Ray already running "
                    "on this machine (Ray's rule: the latest started), else a new local one")


def _init_ray(address: str | None) -> None:
    import ray
    import ray.data  # noqa: F401  (imported before quiet_ray_logs: importing it configures its loggers)

    from pipeline.log import driver_level, quiet_ray_logs

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        ray.init(address=address, include_dashboard=False)  # this machine's CPUs (and GPUs)
    else:
        ray.init(address=address)  # a cluster (ray job submit sets RAY_ADDRESS)
    if driver_level() > logging.DEBUG:
        quiet_ray_logs(driver_level())
    res = ray.cluster_resources()
    log.info(
        f"Ray: cluster at {ray.get_runtime_context().gcs_address}, {len(ray.nodes())} node(s), "
        f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


def main(argv: list[str] | None = None) -> int:
    """The `securevqa` command. A mistake in what the user gave (a manifest, a path) prints one line
    saying what is wrong and exits 2, as argparse does for a bad flag; no traceback."""
    from pipeline.io.manifest import ManifestError
    from pipeline.io.table import TableError

    try:
        return _main(argv)
    except (ManifestError, TableError, FileNotFoundError) as e:
        print(f"securevqa: error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "weights":
        return _list_weights(args)
    from pipeline.log import configure as configure_logging

    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    configure_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO, quiet_ray=not verbose)
    so = _storage_options(args)

    from pipeline.io.manifest import read_manifest
    from pipeline.report.build import build_report
    from pipeline.report.summary import load_scores

    if args.command == "average":
        return _average(args, so)
    if args.command == "train":
        return _train(args, so)
    if args.command == "attack":
        return _attack(args, so)
    if args.command == "report":
        label, scores = _versioned(load_scores, args.scores, so, args.as_of)
        compare = None if args.compare_to is None else _versioned(load_scores, args.scores, so, args.compare_to)
        result = build_report(scores, args.output, so, compare_to=compare, label=label)
        keys = ("table", "n_videos", "n_ok", "n_failed", "srcc", "plcc")
        summary = {k: result.get(k) for k in keys}
        if compare is not None:
            c = result["comparison"]
            summary["changed_since"] = {k: c[k] for k in ("labels", "new", "dropped", "scored_in_both", "changed")}
        print(json.dumps(summary))
        return 0
    if args.command == "vacuum":
        from pipeline.io.maintenance import maintain

        for uri in args.tables:
            print(json.dumps(maintain(uri, so, optimize=not args.no_optimize, retention_hours=args.retention_hours,
                                      dry_run=args.dry_run)))
        return 0
    if args.command == "migrate":
        from pipeline.io.migrate import migrate

        for uri in args.tables:
            print(json.dumps(migrate(uri, so, dry_run=args.dry_run)))
        return 0

    from pipeline.stages.inter import extract_inter
    from pipeline.stages.scoring import score

    spec, opts = spec_and_options(args, so)
    manifest = read_manifest(args.input, so)
    if args.limit:
        manifest = manifest.head(args.limit)
    _warn_untrained(spec)
    _init_ray(args.ray_address)
    if args.command == "extract-inter":
        print(extract_inter(manifest, args.cache, spec, opts).line())
    elif args.command == "score":
        summary, inter_summary = score(manifest, args.cache, args.output, spec, opts,
                                       compute_missing_inter=not args.no_compute_inter)
        if inter_summary is not None:
            print(inter_summary.line())
        print(summary.line())
    elif args.command == "rescore":
        from pipeline.stages.rescore import rescore

        run = rescore(manifest, args.state, spec, opts, maintenance=not args.no_maintenance,
                      **_given(history_days=args.history_days))
        print(f"rescore: {run['catalog_videos']} videos in the catalog: {run['new']} new, {run['changed']} changed, "
              f"{run['unchanged']} unchanged, {run['dropped']} dropped; scored {run['scored_this_run']}, "
              f"{run['failed']} failed, in {run['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
