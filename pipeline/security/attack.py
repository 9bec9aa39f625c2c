"""Security evaluation job: attack a labelled set of videos under each defense configuration.

Shape of a run (docs/design.md §3), on the same machinery as the scoring stages (keys, Delta tables, actor pool):

1. clean: every (video, defenses) pair is scored by `DefendedVQA` on the frames the attack will see
   (the first `max_frames`), into OUTPUT/clean;
2. targets: per defense configuration, the score-reversed boundary over the attacked set's clean
   scores and normalised MOS (MOS / max MOS);
3. attack: every (video, defenses, attack) triple is attacked and the adversarial video scored with
   fresh draws, into OUTPUT/results (clean score, adversarial score, target, perturbation norms,
   queries, time);
4. summary: per (defenses, attack), SRCC/PLCC clean and adversarial against normalised MOS, R and
   the mean score shift with bootstrap CIs: summary.csv, summary.md (shaped like the paper's Tables
   I/II and V/VI), summary.json, clean_vs_adv.png.

Row keys hash the video's content and the model version with the defenses, the attack and the
target, so an interrupted run resumes where it stopped and a changed set recomputes what changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from model import make_generator
from model.rng import derive_seed
from model.security.attacks import AttackSpec, attack_video, normalised_mos, perturbation_norms, score_reversed_targets
from model.security.defense import DefendedVQA, Defenses
from pipeline.io.storage import make_key
from pipeline.io.table import KeyedTable
from pipeline.stages.batching import open_video
from pipeline.stages.driver import StageSummary, failure, keyed_manifest, run
from pipeline.stages.options import ModelSpec, RunOptions
from pipeline.stages.rows import IDENTITY_COLUMNS, STATUS_COLUMNS, row_schema
from pipeline.stages.stage import Stage

from .summary import summarize, write_summary

log = logging.getLogger("securevqa.security")

# Decoded frames are held as float32 for the attack: refuse what would not fit, before decoding.
MAX_FRAME_BYTES = 4 * 2**30


@dataclass(frozen=True)
class AttackPlan:
    """What a security evaluation runs: defense configurations x attacks on the first `max_videos`."""

    defenses: tuple[Defenses, ...] = (Defenses(False, False, False), Defenses())
    attacks: tuple[AttackSpec, ...] = (AttackSpec(),)
    max_videos: int | None = 50  # the published protocol attacks 50 test videos
    max_frames: int | None = None  # attack (and score) only the first N frames of each video
    n_boot: int = 1000
    ci_seed: int = 0

    def __post_init__(self) -> None:
        if not self.defenses or not self.attacks:
            raise ValueError("an attack plan needs at least one defense configuration and one attack")
        for name, items in (("defenses", [d.name for d in self.defenses]), ("attacks", [a.name for a in self.attacks])):
            if len(set(items)) != len(items):
                raise ValueError(f"{name} listed twice: {items}")
        if (self.max_videos is not None and self.max_videos < 3) or (self.max_frames is not None and self.max_frames < 1):
            raise ValueError("max_videos must be >= 3 (the target rule needs spread) and max_frames >= 1")


_RUN_COLUMNS = (("model_version", pa.string()), ("seeded", pa.bool_()), ("seconds", pa.float64()),
                ("created_at", pa.float64()))

CLEAN_SCHEMA = row_schema(
    IDENTITY_COLUMNS,
    [("defenses", pa.string()), ("mos", pa.float64()), ("score", pa.float64()), ("frames", pa.int64()),
     ("width", pa.int32()), ("height", pa.int32())],
    STATUS_COLUMNS, _RUN_COLUMNS,
)

RESULT_SCHEMA = row_schema(
    IDENTITY_COLUMNS,
    [("defenses", pa.string()), ("attack", pa.string()), ("adaptive", pa.bool_()), ("mos", pa.float64()),
     ("q_mos", pa.float64()), ("clean_score", pa.float64()), ("target", pa.float64()), ("adv_score", pa.float64()),
     ("linf", pa.float64()), ("rms", pa.float64()), ("queries", pa.int64()), ("frames", pa.int64())],
    STATUS_COLUMNS, _RUN_COLUMNS,
)


def read_frames01(uri: str, storage_options: Mapping[str, Any], max_frames: int | None,
                  stream: int | None = None) -> torch.Tensor:
    """The first `max_frames` frames (all by default) of `stream` (None: the default video stream) as
    float32 (T, 3, H, W) in [0, 1]."""
    with open_video(uri, storage_options, stream) as video:
        info = video.info
        n = info.num_frames if max_frames is None else min(max_frames, info.num_frames)
        need = n * 3 * info.height * info.width * 4
        if need > MAX_FRAME_BYTES:
            raise MemoryError(
                f"{n} frames of {info.width}x{info.height} need {need / 2**30:.1f} GiB as float32; "
                f"attack fewer frames (--max-frames)")
        frames = video.read(torch.arange(n))
    return frames.permute(0, 3, 1, 2).float().div_(255.0)


class _Evaluator(Stage):
    """What the clean scoring and the attack stages share: the model once per actor, gradients off for
    the weights (attacks need the pixels')."""

    def __init__(self, spec: ModelSpec, opts: RunOptions, version: str, max_frames: int | None) -> None:
        super().__init__(opts)
        self.spec, self.version, self.max_frames = spec, version, max_frames

    def setup(self) -> None:
        self.vqa, self.inter = self.spec.build(self.opts.storage_options)
        for p in [*self.vqa.parameters(), *self.inter.parameters()]:
            p.requires_grad_(False)
        self.device = next(self.vqa.parameters()).device  # where ModelSpec put it (a GPU when there is one)

    def frames(self, uri: str) -> torch.Tensor:
        return read_frames01(uri, self.opts.storage_options, self.max_frames, self.opts.stream).to(self.device)

    def scorer(self, defenses: str, clips: int | None = None) -> DefendedVQA:
        return DefendedVQA(self.vqa, self.inter, Defenses.parse(defenses), num_clips=clips or self.opts.clips)

    def generator(self, key: str, role: str) -> torch.Generator:
        return make_generator(derive_seed(self.opts.seed, key, role))


class CleanScorer(_Evaluator):
    """The attack job's first stage: each video's score under one defense configuration, unattacked."""

    name = "attack-clean"
    schema = CLEAN_SCHEMA

    def score(self, r: Any) -> dict[str, Any]:
        row = self.new_row(r, defenses=r.defenses, mos=float(r.mos), model_version=self.version,
                           seeded=self.opts.seed is not None, seconds=0.0)
        t0 = time.perf_counter()
        try:
            frames = self.frames(r.uri)
            row.update(frames=frames.shape[0], height=frames.shape[2], width=frames.shape[3])
            with torch.no_grad():
                row["score"] = float(self.scorer(r.defenses)(frames[None], generator=self.generator(r.key, "score"))[0])
        except Exception as exc:  # one bad video never costs another its row
            row.update(failure(exc))
        row["seconds"] = time.perf_counter() - t0
        return row

    def process(self, batch: pd.DataFrame) -> list[dict[str, Any]]:
        return [self.score(r) for r in batch.itertuples(index=False)]


class Attacker(_Evaluator):
    """The attack job's second stage: one attack on one video under one defense configuration, towards
    the video's score-reversed target (docs/design.md §3)."""

    name = "attack"
    schema = RESULT_SCHEMA

    def attack(self, r: Any) -> dict[str, Any]:
        spec = AttackSpec.parse(r.attack)
        row = self.new_row(r, defenses=r.defenses, attack=r.attack, adaptive=spec.adaptive, mos=float(r.mos),
                           q_mos=float(r.q_mos), clean_score=float(r.clean_score), target=float(r.target),
                           model_version=self.version, seeded=self.opts.seed is not None, seconds=0.0)
        t0 = time.perf_counter()
        try:
            frames = self.frames(r.uri)
            scorer, objective = self.scorer(r.defenses), self.scorer(r.defenses, spec.clips)

            def progress(done: int, total: int) -> None:  # long videos: a line per frame batch or step
                if total > 1:
                    log.info(f"attack: {r.video_id} [{r.defenses} | {r.attack}]: {done}/{total} "
                          f"{'steps' if spec.objective == 'video' else 'frame batches'}, "
                          f"{time.perf_counter() - t0:.0f} s")

            res = attack_video(frames, lambda v, g: objective(v, generator=g), r.target, spec,
                               attacker=self.generator(r.key, "attacker"), defender=self.generator(r.key, "defender"),
                               progress=progress)
            with torch.no_grad():
                adv = float(scorer(res.adversarial[None], generator=self.generator(r.key, "score"))[0])
            row.update(adv_score=adv, **perturbation_norms(frames, res.adversarial), queries=int(res.queries.sum()),
                       frames=frames.shape[0])
        except Exception as exc:
            row.update(failure(exc))
        row["seconds"] = time.perf_counter() - t0
        moved = "failed" if row["adv_score"] is None else f"{row['clean_score']:.4f} -> {row['adv_score']:.4f}"
        log.info(f"attack: {row['video_id']} [{r.defenses} | {r.attack}]: {moved} (target {row['target']:.4f}), "
              f"{row['queries'] or 0} queries, {row['seconds']:.0f} s")
        return row

    def process(self, batch: pd.DataFrame) -> list[dict[str, Any]]:
        return [self.attack(r) for r in batch.itertuples(index=False)]


@dataclass
class AttackSummary:
    clean: StageSummary
    attack: StageSummary
    table: pd.DataFrame = field(repr=False)
    output_uri: str = ""

    def lines(self) -> list[str]:
        return [self.clean.line(), self.attack.line(), f"attack: summary -> {self.output_uri.rstrip('/')}/summary.md"]


def _labelled(manifest: pd.DataFrame, max_videos: int | None) -> pd.DataFrame:
    if "mos" not in manifest or manifest["mos"].notna().sum() == 0:
        raise ValueError("the security evaluation needs a labelled manifest (a mos column): the target rule and "
                         "SRCC/PLCC are defined against MOS")
    unlabelled = manifest["mos"].isna()
    if unlabelled.any():
        log.warning(f"attack: {int(unlabelled.sum())} video(s) without MOS left out")
    out = manifest[~unlabelled]
    out = out.head(max_videos) if max_videos else out
    if len(out) < 3:
        raise ValueError(f"need at least 3 labelled videos, got {len(out)}")
    return out.reset_index(drop=True)


def _committed(rows: pd.DataFrame, table: KeyedTable, columns: list[str]) -> pd.DataFrame:
    """`rows` with their committed `columns`; a row the table lacks (an actor lost mid-run) gets status
    'error' and is reported, never silently dropped."""
    t = table.rows_for(rows["key"], columns=["key", *columns]).to_pandas()
    out = rows.merge(t, on="key", how="left")
    missing = out["status"].isna()
    out.loc[missing, "status"], out.loc[missing, "error"] = "error", "not committed (re-run to compute it)"
    return out


def _pairs(rows: pd.DataFrame, column: str, values: Sequence[str]) -> pd.DataFrame:
    return pd.concat([rows.assign(**{column: v}) for v in values], ignore_index=True)


def run_attacks(manifest: pd.DataFrame, output_uri: str, spec: ModelSpec, plan: AttackPlan,
                opts: RunOptions) -> AttackSummary:
    """Run the plan over `manifest` into `output_uri` (local or s3://); resumable (see module docstring)."""
    so = opts.storage_options
    videos = _labelled(manifest, plan.max_videos)
    version = spec.versions(so)["score"]
    clips = opts.clips or "test"
    base = output_uri.rstrip("/")

    # 1. clean scores under each defense configuration
    stat = keyed_manifest(videos, version, so).drop(columns="key")
    rows = _pairs(stat, "defenses", [d.name for d in plan.defenses])
    rows["key"] = [make_key(u, c, version, "clean", d, plan.max_frames, clips, *opts.key_extra())
                   for u, c, d in zip(rows["uri"], rows["content_key"], rows["defenses"])]
    clean_summary = run(CleanScorer(spec, opts, version, plan.max_frames), rows, f"{base}/clean")
    store = KeyedTable(f"{base}/clean", so)

    # 2. targets per defense configuration, over the videos that scored
    t0 = time.perf_counter()
    clean = _committed(rows, store, ["score", "status", "error"])
    ok = clean[clean["status"] == "ok"].copy()
    for name in sorted(set(clean.loc[clean["status"] != "ok", "video_id"])):
        log.warning(f"attack: {name} left out: {clean.loc[clean['video_id'] == name, 'error'].iloc[0]}")
    q_mos = dict(zip(videos["uri"], normalised_mos(videos["mos"].to_numpy())))  # over the attacked set
    ok["q_mos"] = ok["uri"].map(q_mos)
    parts = []
    for d in plan.defenses:
        g = ok[ok["defenses"] == d.name]
        if len(g) < 3:
            log.warning(f"attack: {d.name}: only {len(g)} video(s) scored; the target rule needs 3 or more: not attacked")
            continue
        t = score_reversed_targets(g["score"].to_numpy(), g["q_mos"].to_numpy())
        parts.append(g.assign(target=t.target, clean_score=g["score"]))
    if not parts:
        raise RuntimeError(f"no defense configuration has 3 or more scored videos; see {base}/clean for errors")
    targets = pd.concat(parts, ignore_index=True)[
        ["video_id", "uri", "content_key", "mos", "q_mos", "defenses", "clean_score", "target"]]

    # 3. attacks
    targets_s = time.perf_counter() - t0  # the attack line includes choosing the targets, as it always did
    arows = _pairs(targets, "attack", [a.name for a in plan.attacks])
    arows["key"] = [make_key(u, c, version, "attack", d, a, plan.max_frames, clips, f"{t:.9g}",
                             *opts.key_extra())
                    for u, c, d, a, t in zip(arows["uri"], arows["content_key"], arows["defenses"], arows["attack"],
                                             arows["target"])]
    attack_summary = run(Attacker(spec, opts, version, plan.max_frames), arows, f"{base}/results")
    attack_summary.seconds += targets_s
    rstore = KeyedTable(f"{base}/results", so)

    # 4. summary of this plan's rows
    results = _committed(arows, rstore, ["adv_score", "linf", "rms", "queries", "frames", "status", "error", "seconds"])
    table = summarize(results, plan)
    write_summary(table, results, base, so)
    return AttackSummary(clean_summary, attack_summary, table, output_uri)
