"""`securevqa`: one command line for every job. Parses arguments and calls the pipeline, nothing more.

    securevqa extract-inter --input IN --cache URI
    securevqa score   --input IN --cache URI --output URI
    securevqa report  --scores URI --output URI
    securevqa rescore --input IN --state URI

IN is a manifest (CSV, Parquet, JSON lines; a `uri` column, optional `video_id`, `mos`, `dataset`)
or a directory or glob of videos; every URI may be local or s3://. On a cluster:
`ray job submit --working-dir . -- python -m jobs.score --input s3://... --cache s3://... --output s3://...`
"""

from __future__ import annotations

import argparse
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
    p.add_argument("-v", "--verbose", action="store_true")


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", help="SecureVQA checkpoint (ours or the reference layout), path or URI")
    g.add_argument("--inter-checkpoint", help="pytorchvideo SLOWFAST_8x8_R50.pyth for the fast pathway")
    g.add_argument("--preset", choices=["paper", "tiny"],
                   help="architecture (default: the checkpoint's own, 'paper' for reference checkpoints, else 'tiny')")
    g.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    g.add_argument("--no-guardian", action="store_true", help="disable the guardian map (ablations only)")
    r = p.add_argument_group("run")
    r.add_argument("--actors", type=int, help="actor pool size (default: one per GPU, else one per 2 CPUs)")
    r.add_argument("--batch-size", type=int, default=8, help="videos per actor call and per committed shard")
    r.add_argument("--gpus-per-actor", type=float, help="default 1 where the cluster has GPUs, else 0")
    r.add_argument("--cpus-per-actor", type=float, default=1.0, help="logical CPUs Ray reserves per actor")
    r.add_argument("--threads", type=int, help="torch threads per actor (default: --cpus-per-actor)")
    r.add_argument("--clips", type=int, help="intra clips per video (default: the preset's 4)")
    r.add_argument("--seed", type=int, help="replay guardian maps and offsets (default: fresh randomness)")
    r.add_argument("--retry-errors", action="store_true", help="recompute videos that failed last time")
    r.add_argument("--limit", type=int, help="only the first N videos of the input")
    r.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securevqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract-inter", help="stage 1: cache inter (fast pathway) embeddings as Parquet")
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
    p.add_argument("--scores", required=True)
    p.add_argument("--output", required=True)
    _add_io(p)
    p = sub.add_parser("rescore", help="nightly: score only new or changed videos, publish the full table")
    p.add_argument("--input", required=True)
    p.add_argument("--state", required=True)
    _add_model(p)
    _add_io(p)
    return parser


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None)  # a cluster (ray job submit sets RAY_ADDRESS)
    else:
        ray.init(include_dashboard=False)  # local: the machine's CPUs (and GPUs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    so = _storage_options(args)

    from pipeline.manifest import read_manifest
    from pipeline.report import build_report, load_scores

    if args.command == "report":
        result = build_report(load_scores(args.scores, so), args.output, so)
        print(json.dumps({k: result.get(k) for k in ("n_videos", "n_ok", "n_failed", "srcc", "plcc")}))
        return 0

    from pipeline.stages import ModelSpec, RunOptions, extract_inter, score

    spec = ModelSpec(preset=args.preset, checkpoint=args.checkpoint, inter_checkpoint=args.inter_checkpoint,
                     precision=args.precision, guardian=not args.no_guardian)
    opts = RunOptions(storage_options=so, actors=args.actors, batch_size=args.batch_size,
                      gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                      threads=args.threads, clips=args.clips,
                      seed=args.seed, retry_errors=args.retry_errors)
    manifest = read_manifest(args.input, so)
    if args.limit:
        manifest = manifest.head(args.limit)
    if spec.checkpoint is None and spec.preset in (None, "tiny"):
        log.warning("no --checkpoint: scores come from an UNTRAINED tiny model")
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
        from pipeline.rescore import rescore

        run = rescore(manifest, args.state, spec, opts)
        print(f"rescore: {run['catalog_videos']} videos in the catalog: {run['new']} new, {run['changed']} changed, "
              f"{run['unchanged']} unchanged, {run['dropped']} dropped; scored {run['scored_this_run']}, "
              f"{run['failed']} failed, in {run['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
