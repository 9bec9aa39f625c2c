"""Security evaluation job: attack a labelled set of videos under each defense configuration.

Shape of a run (DESIGN 3), on the same machinery as the scoring stages (keys, shards, actor pool):

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

import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from model import make_generator
from model.attacks import AttackSpec, attack_video, normalised_mos, perturbation_norms, score_reversed_targets
from model.defense import DefendedVQA, Defenses
from model.metrics import security_metrics
from model.rng import derive_seed

from .stages import (
    ModelSpec, RunOptions, StageSummary, _common_fields, _pending, _run, _shard_table,
    _summary_frame, failure, keyed_manifest, open_video,
)
from .storage import ShardStore, make_key, write_bytes

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


CLEAN_SCHEMA = pa.schema([
    ("key", pa.string()), ("video_id", pa.string()), ("uri", pa.string()), ("content_key", pa.string()),
    ("defenses", pa.string()), ("mos", pa.float64()), ("score", pa.float64()), ("frames", pa.int64()),
    ("width", pa.int32()), ("height", pa.int32()), ("status", pa.string()), ("error", pa.string()), ("error_code", pa.string()),
    ("model_version", pa.string()), ("seeded", pa.bool_()), ("seconds", pa.float64()), ("created_at", pa.float64()),
])

RESULT_SCHEMA = pa.schema([
    ("key", pa.string()), ("video_id", pa.string()), ("uri", pa.string()), ("content_key", pa.string()),
    ("defenses", pa.string()), ("attack", pa.string()), ("adaptive", pa.bool_()), ("mos", pa.float64()),
    ("q_mos", pa.float64()), ("clean_score", pa.float64()), ("target", pa.float64()),
    ("adv_score", pa.float64()), ("linf", pa.float64()), ("rms", pa.float64()), ("queries", pa.int64()),
    ("frames", pa.int64()), ("status", pa.string()), ("error", pa.string()), ("error_code", pa.string()), ("model_version", pa.string()),
    ("seeded", pa.bool_()), ("seconds", pa.float64()), ("created_at", pa.float64()),
])


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


class _Evaluator:
    """Shared actor set-up: the model once, gradients off for the weights (attacks need the pixels')."""

    def __init__(self, spec: ModelSpec, output_uri: str, opts: RunOptions, version: str, max_frames: int | None):
        torch.set_num_threads(opts.threads or max(1, int(opts.cpus_per_actor)))
        self.vqa, self.inter = spec.build(opts.storage_options)
        for p in [*self.vqa.parameters(), *self.inter.parameters()]:
            p.requires_grad_(False)
        self.store = ShardStore(output_uri, opts.storage_options)
        self.opts, self.version, self.max_frames = opts, version, max_frames
        self.device = next(self.vqa.parameters()).device  # where ModelSpec put it (a GPU when there is one)

    def frames(self, uri: str) -> torch.Tensor:
        return read_frames01(uri, self.opts.storage_options, self.max_frames, self.opts.stream).to(self.device)

    def scorer(self, defenses: str, clips: int | None = None) -> DefendedVQA:
        return DefendedVQA(self.vqa, self.inter, Defenses.parse(defenses), num_clips=clips or self.opts.clips)

    def generator(self, key: str, role: str) -> torch.Generator:
        return make_generator(derive_seed(self.opts.seed, key, role))


class CleanScorer(_Evaluator):
    schema = CLEAN_SCHEMA

    def score(self, r: Any) -> dict[str, Any]:
        row = {**_common_fields(r), "defenses": r.defenses, "mos": float(r.mos), "score": None, "frames": None,
               "width": None, "height": None, "status": "ok", "error": None, "error_code": None, "model_version": self.version,
               "seeded": self.opts.seed is not None, "seconds": 0.0, "created_at": time.time()}
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

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [self.score(r) for r in batch.itertuples(index=False)]
        self.store.commit(None, _shard_table(rows, CLEAN_SCHEMA), [r["key"] for r in rows])
        return _summary_frame(rows)


class Attacker(_Evaluator):
    schema = RESULT_SCHEMA

    def attack(self, r: Any) -> dict[str, Any]:
        spec = AttackSpec.parse(r.attack)
        row = {**_common_fields(r), "defenses": r.defenses, "attack": r.attack, "adaptive": spec.adaptive,
               "mos": float(r.mos), "q_mos": float(r.q_mos), "clean_score": float(r.clean_score),
               "target": float(r.target), "adv_score": None, "linf": None, "rms": None, "queries": None,
               "frames": None, "status": "ok", "error": None, "error_code": None, "model_version": self.version,
               "seeded": self.opts.seed is not None, "seconds": 0.0, "created_at": time.time()}
        t0 = time.perf_counter()
        try:
            frames = self.frames(r.uri)
            scorer, objective = self.scorer(r.defenses), self.scorer(r.defenses, spec.clips)

            def progress(done: int, total: int) -> None:  # long videos: a line per frame batch or step
                if total > 1:
                    print(f"attack: {r.video_id} [{r.defenses} | {r.attack}]: {done}/{total} "
                          f"{'steps' if spec.objective == 'video' else 'frame batches'}, "
                          f"{time.perf_counter() - t0:.0f} s", flush=True)

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
        print(f"attack: {row['video_id']} [{r.defenses} | {r.attack}]: {moved} (target {row['target']:.4f}), "
              f"{row['queries'] or 0} queries, {row['seconds']:.0f} s", flush=True)
        return row

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [self.attack(r) for r in batch.itertuples(index=False)]
        self.store.commit(None, _shard_table(rows, RESULT_SCHEMA), [r["key"] for r in rows])
        return _summary_frame(rows)


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
        print(f"attack: {int(unlabelled.sum())} video(s) without MOS left out")
    out = manifest[~unlabelled]
    out = out.head(max_videos) if max_videos else out
    if len(out) < 3:
        raise ValueError(f"need at least 3 labelled videos, got {len(out)}")
    return out.reset_index(drop=True)


def _committed(rows: pd.DataFrame, store: ShardStore, columns: list[str]) -> pd.DataFrame:
    """`rows` with their committed `columns`; a row the store lacks (an actor lost mid-run) gets status
    'error' and is reported, never silently dropped."""
    t = store.read_table(columns=["key", *columns]).to_pandas()
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
    ctor = {"spec": spec, "opts": opts, "version": version, "max_frames": plan.max_frames}
    base = output_uri.rstrip("/")

    # 1. clean scores under each defense configuration
    t0 = time.perf_counter()
    stat = keyed_manifest(videos, version, so).drop(columns="key")
    rows = _pairs(stat, "defenses", [d.name for d in plan.defenses])
    rows["key"] = [make_key(u, c, version, "clean", d, plan.max_frames, clips, *opts.key_extra())
                   for u, c, d in zip(rows["uri"], rows["content_key"], rows["defenses"])]
    store = ShardStore(f"{base}/clean", so)
    todo, skipped = _pending(rows, store, opts.retry_errors)
    clean_summary = StageSummary("attack-clean", videos=len(rows), skipped=skipped, keys=rows["key"].tolist())
    _run(todo, CleanScorer, {**ctor, "output_uri": f"{base}/clean"}, opts, clean_summary, store)
    clean_summary.seconds = time.perf_counter() - t0

    # 2. targets per defense configuration, over the videos that scored
    t0 = time.perf_counter()
    clean = _committed(rows, store, ["score", "status", "error"])
    ok = clean[clean["status"] == "ok"].copy()
    for name in sorted(set(clean.loc[clean["status"] != "ok", "video_id"])):
        print(f"attack: {name} left out: {clean.loc[clean['video_id'] == name, 'error'].iloc[0]}")
    q_mos = dict(zip(videos["uri"], normalised_mos(videos["mos"].to_numpy())))  # over the attacked set
    ok["q_mos"] = ok["uri"].map(q_mos)
    parts = []
    for d in plan.defenses:
        g = ok[ok["defenses"] == d.name]
        if len(g) < 3:
            print(f"attack: {d.name}: only {len(g)} video(s) scored; the target rule needs 3 or more: not attacked")
            continue
        t = score_reversed_targets(g["score"].to_numpy(), g["q_mos"].to_numpy())
        parts.append(g.assign(target=t.target, clean_score=g["score"]))
    if not parts:
        raise RuntimeError(f"no defense configuration has 3 or more scored videos; see {base}/clean for errors")
    targets = pd.concat(parts, ignore_index=True)[
        ["video_id", "uri", "content_key", "mos", "q_mos", "defenses", "clean_score", "target"]]

    # 3. attacks
    arows = _pairs(targets, "attack", [a.name for a in plan.attacks])
    arows["key"] = [make_key(u, c, version, "attack", d, a, plan.max_frames, clips, f"{t:.9g}",
                             *opts.key_extra())
                    for u, c, d, a, t in zip(arows["uri"], arows["content_key"], arows["defenses"], arows["attack"],
                                             arows["target"])]
    rstore = ShardStore(f"{base}/results", so)
    todo, skipped = _pending(arows, rstore, opts.retry_errors)
    attack_summary = StageSummary("attack", videos=len(arows), skipped=skipped, keys=arows["key"].tolist())
    _run(todo, Attacker, {**ctor, "output_uri": f"{base}/results"}, opts, attack_summary, rstore)
    attack_summary.seconds = time.perf_counter() - t0

    # 4. summary of this plan's rows
    results = _committed(arows, rstore, ["adv_score", "linf", "rms", "queries", "frames", "status", "error", "seconds"])
    table = summarize(results, plan)
    write_summary(table, results, base, so)
    return AttackSummary(clean_summary, attack_summary, table, output_uri)


def summarize(results: pd.DataFrame, plan: AttackPlan) -> pd.DataFrame:
    """One row per (defenses, attack) in plan order: the security figures with bootstrap CIs."""
    out = []
    for a in plan.attacks:
        for d in plan.defenses:
            g = results[(results["defenses"] == d.name) & (results["attack"] == a.name)]
            ok = g[g["status"] == "ok"]
            row: dict[str, Any] = {"attack": a.name, "adaptive": a.adaptive, "defenses": d.name,
                                   "failed": int(len(g) - len(ok))}
            if len(ok) >= 3:
                row.update(security_metrics(ok["clean_score"], ok["adv_score"], ok["target"], ok["q_mos"],
                                            n_boot=plan.n_boot, seed=plan.ci_seed))
            else:
                row["n"] = int(len(ok))
            row.update(queries=float(ok["queries"].mean()) if len(ok) else float("nan"),
                       linf=float(ok["linf"].max()) if len(ok) else float("nan"),
                       rms=float(ok["rms"].mean()) if len(ok) else float("nan"),
                       seconds=float(ok["seconds"].sum()))
            out.append(row)
    return pd.DataFrame(out)


def _fmt(row: Mapping[str, Any], name: str) -> str:
    v = row.get(name, float("nan"))
    if v is None or not np.isfinite(v):
        return "n/a"
    lo, hi = row.get(f"{name}_low"), row.get(f"{name}_high")
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{v:.4f}{ci}"


def render_markdown(table: pd.DataFrame) -> str:
    """Tables like the paper's: per attack, one row per defense configuration; SRCC/PLCC after the
    attack with the clean figure beside it (the paper's grey row), R and the mean shift, 95% CIs."""
    lines = ["# Security evaluation", "",
             "SRCC/PLCC against normalised MOS (MOS / max MOS), clean -> adversarial; R = mean ln(|q - target| / "
             "|q_adv - q|) (higher is more robust; 0 = moved the whole way to the target); shift = mean |q_adv - q|. "
             "Brackets: 95% bootstrap CI over videos. Adaptive attacks are marked.", ""]
    for attack, g in table.groupby("attack", sort=False):
        tag = " (adaptive)" if bool(g["adaptive"].iloc[0]) else ""
        lines += [f"## {attack}{tag}", "",
                  "| defenses | n | SRCC clean | SRCC adv | PLCC clean | PLCC adv | R | shift | queries/video | L_inf | RMS |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for _, r in g.iterrows():
            rd = r.to_dict()
            lines.append(
                f"| {rd['defenses']} | {rd.get('n', 0)} | {_fmt(rd, 'srcc_clean')} | {_fmt(rd, 'srcc_adv')} | "
                f"{_fmt(rd, 'plcc_clean')} | {_fmt(rd, 'plcc_adv')} | {_fmt(rd, 'r')} | {_fmt(rd, 'shift')} | "
                f"{rd['queries']:.0f} | {rd['linf']:.2f} | {rd['rms']:.2f} |")
        lines.append("")
        if len(g) > 1:  # the ablation layout of Tables V/VI: one column per defense configuration
            lines += ["| | " + " | ".join(g["defenses"]) + " |", "|---|" + "---:|" * len(g)]
            for label, key in (("SRCC attacked", "srcc_adv"), ("PLCC attacked", "plcc_adv"), ("R", "r"),
                               ("SRCC clean", "srcc_clean"), ("PLCC clean", "plcc_clean"), ("shift", "shift")):
                cells = [f"{v:.4f}" if v is not None and np.isfinite(v) else "n/a"
                         for v in g.get(key, pd.Series([np.nan] * len(g)))]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["L_inf and RMS of the perturbation in 8-bit levels (max over videos, mean over videos).", ""]
    return "\n".join(lines)


def plot_clean_vs_adv(results: pd.DataFrame) -> bytes | None:
    """PNG: adversarial against clean score, one panel per attack, one colour per defense configuration;
    a point on the diagonal did not move, a point on its target's side moved toward it."""
    from .report import DPI, _colors, _png

    ok = results[results["status"] == "ok"]
    if ok.empty:
        return None
    from matplotlib.figure import Figure

    attacks = list(dict.fromkeys(ok["attack"]))
    defenses = list(dict.fromkeys(ok["defenses"]))
    colors = dict(zip(defenses, _colors(len(defenses))))
    fig = Figure(figsize=(4.2 * len(attacks), 4.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    for ax, attack in zip(axes, attacks):
        g = ok[ok["attack"] == attack]
        for d in defenses:
            h = g[g["defenses"] == d]
            if h.empty:
                continue
            ax.scatter(h["clean_score"], h["adv_score"], s=18, color=colors[d], label=d, alpha=0.8)
            ax.scatter(h["clean_score"], h["target"], s=10, marker="_", color=colors[d], alpha=0.6)
        lo = float(np.nanmin(g[["clean_score", "adv_score", "target"]].to_numpy()))
        hi = float(np.nanmax(g[["clean_score", "adv_score", "target"]].to_numpy()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("clean score")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("adversarial score (dashes: targets)")
    axes[-1].legend(fontsize=8, title="defenses", title_fontsize=8)
    return _png(fig)


def write_summary(table: pd.DataFrame, results: pd.DataFrame, base: str, so: Mapping[str, Any]) -> None:
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    write_bytes(f"{base}/summary.csv", buf.getvalue().encode(), so)
    png = plot_clean_vs_adv(results)
    md = render_markdown(table)
    if png is not None:
        write_bytes(f"{base}/clean_vs_adv.png", png, so)
        md += "![adversarial against clean scores](clean_vs_adv.png)\n"
    write_bytes(f"{base}/summary.md", md.encode(), so)
    records = json.loads(table.to_json(orient="records"))  # NaN -> null
    write_bytes(f"{base}/summary.json", json.dumps(records, indent=1).encode(), so)


__all__ = ["AttackPlan", "AttackSummary", "Attacker", "CleanScorer", "plot_clean_vs_adv", "render_markdown",
           "run_attacks", "summarize", "write_summary"]
