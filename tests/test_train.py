"""Training: which parameters move, that a short run learns, per-epoch validation and best-checkpoint
selection, resume after a kill, and the small-dataset protocol."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

from model import create_model, make_generator
from model.losses import LossConfig
from model.optim import build_optimizer
from pipeline.demo.synthetic import moving_pattern
from pipeline.training.config import STATE_FILE, TrainConfig, TrainRun
from pipeline.training.data import GroupedBatchSampler
from pipeline.training.loop import build_model, train_step
from pipeline.training.history import epoch_line, read_history, training_minutes
from pipeline.training.run import train, train_splits
from tests.helpers.procs import cli_subprocess, kill_tree

NOISE = (0, 6, 12, 20, 30, 45)  # pixel noise sigma per quality level; mos = 5 - level


def _write(path: Path, frames: torch.Tensor) -> None:
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        st.options = {"preset": "ultrafast", "crf": "4"}
        for f in frames.numpy():
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def labelled_set(d: Path, contents: range, levels=NOISE) -> pd.DataFrame:
    """Moving textures, each at several noise levels: label = how little noise (a ranking a model can learn)."""
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in contents:
        clean = moving_pattern(32, 96, 128, seed=100 + c).float()
        g = torch.Generator().manual_seed(c)
        for lvl, sigma in enumerate(levels):
            noisy = (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
            path = d / f"c{c}_n{lvl}.mp4"
            _write(path, noisy)
            rows.append({"video_id": path.stem, "uri": str(path), "mos": 5.0 - lvl, "dataset": f"c{c}"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_videos")
    # one inter cache for the module: stage 1 runs once per video, as it would for a user
    return {"train": labelled_set(d / "train", range(2)), "val": labelled_set(d / "val", range(2, 3)),
            "cache": str(d / "inter")}


# ----------------------------------------------------------------------------- one step

def _batch(b: int = 2):
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (b, 1, 3, 32, 224, 224), generator=g, dtype=torch.uint8)
    return clips, torch.randn(b, 16, 64, generator=g), torch.tensor([1.0, 4.0][:b])


@pytest.mark.parametrize("frozen", [False, True])
def test_one_step_moves_exactly_the_trainable_parameters(frozen):
    vqa = build_model(TrainConfig(preset="tiny", freeze_backbone=frozen, reinit_head=frozen), seed=0)
    vqa.train()
    before = {k: v.detach().clone() for k, v in vqa.state_dict().items()}
    clips, inter, mos = _batch()
    inter.requires_grad_(True)
    opt = build_optimizer(vqa, backbone_lr=1e-3, head_lr=1e-3)
    loss = train_step(vqa, clips, inter, mos, opt, LossConfig(), generator=torch.Generator().manual_seed(1))
    assert np.isfinite(loss)
    after = vqa.state_dict()
    params = dict(vqa.named_parameters())
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k, p in params.items() if not (frozen and k.startswith("intra."))}
    assert moved == trainable, (sorted(trainable - moved)[:5], sorted(moved - trainable)[:5])
    assert all(not k.startswith("intra.") for k in moved) if frozen else any(k.startswith("intra.") for k in moved)
    assert any(k.startswith("head.") for k in moved)
    assert inter.grad is not None  # cached embeddings are inputs: gradients reach them, nothing trains them


def test_frozen_backbone_and_fresh_head_come_from_the_run_seed():
    a = build_model(TrainConfig(preset="tiny", reinit_head=True), seed=1)
    b = build_model(TrainConfig(preset="tiny", reinit_head=True), seed=1)
    c = build_model(TrainConfig(preset="tiny", reinit_head=True), seed=2)
    ha, hb, hc = (m.head.state_dict() for m in (a, b, c))
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
    assert not all(torch.equal(ha[k], hc[k]) for k in ha)


def test_grouped_batches_pair_clips_of_the_same_content():
    groups = [f"c{i % 5}" for i in range(5 * 18)]  # 5 contents x 18 clips
    s = GroupedBatchSampler(groups, batch_size=8, per_group=4, generator=torch.Generator().manual_seed(0))
    batches = list(s)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)), "an item at most once per epoch"
    assert len(batches) == len(s) >= 9 and all(len(b) == 8 for b in batches)
    for b in batches:  # two contents, four clips each
        counts = pd.Series([groups[i] for i in b]).value_counts()
        assert sorted(counts) == [4, 4]
    again = list(GroupedBatchSampler(groups, 8, 4, torch.Generator().manual_seed(0)))
    other = list(GroupedBatchSampler(groups, 8, 4, torch.Generator().manual_seed(1)))
    assert again == batches and other != batches
    with pytest.raises(ValueError, match="multiple"):
        GroupedBatchSampler(groups, 6, 4, torch.Generator())
    with pytest.raises(ValueError, match="groups cannot fill"):
        GroupedBatchSampler(["a"] * 10, 8, 4, torch.Generator())


# ----------------------------------------------------------------------------- a short run

TINY = dict(preset="tiny", batch_size=4, head_lr=3e-3, backbone_lr=3e-4, warmup_epochs=0.5, ema_decay=0.8,
            val_clips=1, seed=7)


@pytest.fixture(scope="module")
def micro(micro_ckpt) -> dict:
    """TINY's recipe on the micro model (tests/helpers/micro.py, its checkpoint's config wins over the
    preset): for the tests that check a run's state, resume and bookkeeping, not that it learns."""
    return {**TINY, "init_checkpoint": str(micro_ckpt)}


@pytest.mark.slow
def test_short_run_learns_and_selects_the_best_checkpoint(ray_local, sets, tmp_path):
    out = tmp_path / "run"
    h = train(sets["train"], str(out), TrainConfig(epochs=4, **TINY), TrainRun(workers=1, cache_uri=sets["cache"]), val=sets["val"])
    epochs = h["epochs"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3, 4]
    for r in epochs:  # raw and EMA weights are validated every epoch, on every metric
        assert all(f"val_{w}_{m}" in r for w in ("raw", "ema") for m in ("srcc", "plcc", "krcc", "rmse"))
    start, best = epochs[0]["val_raw_srcc"], h["best"]["val_srcc"]
    print(f"val SRCC (held-out content) before training {start:.3f}; best after training {best:.3f}; per epoch "
          + ", ".join(f"{r['val_raw_srcc']:.2f}/{r['val_ema_srcc']:.2f}" for r in epochs))
    assert best > start + 0.3 and best >= 0.7

    # best.pt: the epoch and weights (raw or EMA) with the highest validation SRCC; loadable and scoring
    # (epoch 0, the start, competes too: a run that only got worse keeps its start)
    scored = [(max(r["val_raw_srcc"], r["val_ema_srcc"]), r["epoch"]) for r in epochs]
    best_srcc, best_epoch = max(scored, key=lambda t: t[0])  # ties: the earliest epoch keeps the title
    assert h["best"]["epoch"] == best_epoch and h["best"]["val_srcc"] == pytest.approx(best_srcc)
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["metadata"]["epoch"] == best_epoch
    vqa, inter = create_model(checkpoint=str(out / "best.pt"))
    assert vqa.cfg.name == "tiny" and inter is not None
    assert (out / "training_curves.png").stat().st_size > 0 and (out / "last.pt").exists()

    # a second run on the same output has nothing left to do
    t0 = time.perf_counter()
    again = train(sets["train"], str(out), TrainConfig(epochs=4, **TINY), TrainRun(workers=1, cache_uri=sets["cache"]), val=sets["val"])
    assert again["epochs"] == epochs and time.perf_counter() - t0 < 60


def _latest_state(out: Path) -> dict:
    snap = json.loads((out / "ray_train" / "checkpoint_manager_snapshot.json").read_text())
    ckpts = sorted(p for p in (out / "ray_train").glob("checkpoint_*") if p.is_dir())
    assert snap and ckpts
    return torch.load(ckpts[-1] / STATE_FILE, weights_only=True)


def _wait_for_first_epoch(proc, out: Path, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    snap = out / "ray_train" / "checkpoint_manager_snapshot.json"
    while time.time() < deadline and proc.poll() is None:
        if snap.exists() and "checkpoint_" in snap.read_text():
            kill_tree(proc)
            return
        time.sleep(0.2)
    log = proc.stdout.read() if proc.stdout else ""
    proc.kill()
    raise AssertionError(f"no checkpoint registered before the job ended or timed out:\n{log[-3000:]}")


@pytest.mark.slow
def test_resume_after_kill_continues_with_the_same_state(ray_local, sets, tmp_path):
    """Killed after its first epoch and started again, a run ends exactly where an uninterrupted run ends:
    same step, same weights, same optimizer moments, same EMA."""
    # The tiny model, not the micro one: an epoch must last long enough for the kill to land after it.
    data = sets["train"].head(8)
    manifest = tmp_path / "train.csv"
    data.to_csv(manifest, index=False)
    cfg = TrainConfig(epochs=2, **{**TINY, "batch_size": 4})
    whole = tmp_path / "whole"
    train(data, str(whole), cfg, TrainRun(workers=1, loader_workers=0, cache_uri=sets["cache"]))

    killed = tmp_path / "killed"
    proc = cli_subprocess(["train", "--input", str(manifest), "--output", str(killed), "--preset", "tiny",
                           "--epochs", "2", "--batch-size", "4", "--head-lr", str(cfg.head_lr),
                           "--backbone-lr", str(cfg.backbone_lr), "--warmup-epochs", str(cfg.warmup_epochs),
                           "--ema-decay", str(cfg.ema_decay), "--seed", str(cfg.seed), "--loader-workers", "0",
                           "--val-clips", "1", "--cache", sets["cache"]])
    _wait_for_first_epoch(proc, killed)
    assert len(read_history(str(killed))["epochs"]) == 1, "killed after exactly one epoch"
    train(data, str(killed), cfg, TrainRun(workers=1, loader_workers=0, cache_uri=sets["cache"]))

    # the run's training time counts both invocations' epochs, not only the resumed one's
    epochs = [r for r in read_history(str(killed))["epochs"] if r["epoch"] > 0]  # epoch 0: validation only
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["train_s"] > 0 for r in epochs)
    assert training_minutes({"epochs": epochs}) > training_minutes({"epochs": epochs[1:]}) > 0

    a, b = _latest_state(whole), _latest_state(killed)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (1, 4)
    for part in ("model", "ema"):
        sa, sb = (a[part] if part == "model" else a[part]["module"]), (b[part] if part == "model" else b[part]["module"])
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-6, msg=f"{part} {k}")
    assert a["ema"]["num_updates"] == b["ema"]["num_updates"] == 4
    for i, st in a["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(b["optimizer"]["state"][i][k], st[k], rtol=0, atol=1e-6)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert [r["train_loss"] for r in a["history"]] == pytest.approx([r["train_loss"] for r in b["history"]], abs=1e-6)


@pytest.mark.slow
def test_small_dataset_protocol_reports_mean_and_std_over_splits(ray_local, sets, micro, tmp_path):
    data = pd.concat([sets["train"], sets["val"]]).reset_index(drop=True)
    cfg = TrainConfig(epochs=1, freeze_backbone=True, reinit_head=True, **{**micro, "batch_size": 8})
    summary = train_splits(data, str(tmp_path / "p"), cfg, TrainRun(workers=1, cache_uri=sets["cache"]), n_splits=2, train_fraction=0.8)
    assert len(summary["splits"]) == 2
    srcc = [s["val_ema_srcc"] for s in summary["splits"]]
    assert summary["stats"]["val_ema_srcc"]["mean"] == pytest.approx(np.mean(srcc))
    assert summary["stats"]["val_ema_srcc"]["std"] == pytest.approx(np.std(srcc))
    assert "±" in (tmp_path / "p" / "splits.md").read_text()
    # backbone frozen: the exported model's intra weights are the initial ones, the head is new
    for k in range(2):
        hist = read_history(str(tmp_path / "p" / f"split_{k:02d}"))
        trained = torch.load(tmp_path / "p" / f"split_{k:02d}" / "last.pt", weights_only=True)["securevqa"]
        start = build_model(cfg, seed=hist["seed"]).state_dict()
        assert all(torch.equal(trained[n], start[n]) for n in start if n.startswith("intra."))
        assert not all(torch.equal(trained[n], start[n]) for n in start if n.startswith("head."))
        assert len(hist["config"]) and hist["config"]["freeze_backbone"]


@pytest.mark.slow
def test_two_worker_ddp_run_on_gloo(ray_local, sets, micro, tmp_path):
    """Two Ray Train workers (DDP over gloo, as on a multi-GPU cluster but on CPU): each takes half of the
    global batch, the run completes, rank 0 publishes a model that loads, and the weights moved."""
    data = sets["train"].head(12)
    cfg = TrainConfig(epochs=1, **{**micro, "batch_size": 4})
    out = tmp_path / "ddp"
    h = train(data, str(out), cfg, TrainRun(workers=2, cpus_per_worker=0.5, threads=1, loader_workers=0,
                                            cache_uri=sets["cache"]))
    assert [r["epoch"] for r in h["epochs"]] == [1]
    assert h["epochs"][0]["step"] == 12 // 4  # 2 workers x 2 videos per step: 3 steps cover the epoch once
    assert np.isfinite(h["epochs"][0]["train_loss"])
    state = _latest_state(out)
    start = build_model(cfg, seed=h["seed"]).state_dict()
    moved = [k for k in start if k.startswith("head.") and not torch.equal(state["model"][k], start[k])]
    assert moved, "no head weight changed: the DDP step did not apply"
    vqa, _ = create_model(checkpoint=str(out / "last.pt"))
    assert vqa.cfg.name == "micro"


@pytest.mark.slow
def test_a_relative_init_checkpoint_is_found_by_the_workers(ray_local, sets, micro, tmp_path, monkeypatch):
    """`securevqa train --init weights/best.pt` from the shell: Ray Train workers run in another working
    directory, so the driver makes the path absolute before it ships the recipe to them; what the run records
    is the path as given (a committed history.json must not name the machine's folders)."""
    ckpt = Path(micro["init_checkpoint"])
    monkeypatch.chdir(ckpt.parent.parent)
    relative = f"{ckpt.parent.name}/{ckpt.name}"
    cfg = TrainConfig(epochs=1, **{**micro, "init_checkpoint": relative, "batch_size": 4})
    h = train(sets["train"].head(8), str(tmp_path / "run"), cfg,
              TrainRun(workers=1, loader_workers=0, cache_uri=sets["cache"]))
    assert [r["epoch"] for r in h["epochs"]] == [1]
    assert h["config"]["init_checkpoint"] == relative
    meta = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=True)["metadata"]
    assert meta["train_config"]["init_checkpoint"] == relative


def test_inter_calibration_is_saved_once_and_read_back(sets, tmp_path):
    from model import create_model
    from model.checkpoint import read_checkpoint
    from pipeline.stages.options import ModelSpec
    from pipeline.training.run import calibrate_inter

    spec = ModelSpec(preset="tiny-cpu")
    uri = str(tmp_path / "inter_calibrated.pt")
    assert calibrate_inter(sets["train"], spec, uri, videos=3, seed=0) == uri
    stamp = Path(uri).stat().st_mtime_ns
    ckpt = read_checkpoint(uri)
    assert len(ckpt["metadata"]["inter_calibration"]["videos"]) == 3
    means = {k: v for k, v in ckpt["inter"].items() if k.endswith("running_mean")}
    assert means and all(v.abs().max() > 0 for v in means.values())  # estimated, not the defaults
    calibrate_inter(sets["train"], spec, uri, videos=3, seed=1)  # a resumed run: reused as it is
    assert Path(uri).stat().st_mtime_ns == stamp
    _, inter = create_model("tiny-cpu", inter_checkpoint=uri)
    assert torch.equal(inter.fastpath.state_dict()[next(iter(means))], next(iter(means.values())))
    calibrated = ModelSpec(preset="tiny-cpu", inter_checkpoint=uri).versions()["inter"]
    assert calibrated != spec.versions()["inter"]  # new weights, new stage-1 cache keys


def test_validation_reports_srcc_within_each_content():
    """A model that orders every content's qualities right but adds a content offset: pooled SRCC
    is low, SRCC within contents is 1 (issue 12: report both)."""
    from pipeline.training.loop import evaluate

    labels = [1.0, 2.0, 3.0, 4.0] * 3
    groups = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    offset = {"a": 10.0, "b": 0.0, "c": -10.0}
    preds = [y + offset[g] for y, g in zip(labels, groups)]

    class Stub(torch.nn.Module):
        def forward(self, clips, inter, generator=None):
            return clips.view(-1, 1)  # the "clip" carries the prediction

    loader = [(torch.tensor([p]), torch.zeros(1), torch.tensor([y]), torch.tensor([i]))
              for i, (p, y) in enumerate(zip(preds, labels))]
    out = evaluate({"m": Stub()}, loader, seed=0, groups=groups)["m"]
    assert out["within_srcc"] == pytest.approx(1.0) and out["srcc"] < 0.5
    assert "within_srcc" not in evaluate({"m": Stub()}, loader, seed=0)["m"]


# ----------------------------------------------------------------------------- the fidelity target

def test_reference_clips_come_from_the_same_frames_and_fragment_positions(sets):
    from pipeline.training.data import ClipDataset

    df = sets["train"]
    clean, noisy = (df[df["video_id"] == f"c0_n{k}"].iloc[0] for k in (0, 4))
    rows = [{"video_id": r.video_id, "uri": r.uri, "mos": r.mos, "inter_key": "k", "reference": clean.uri}
            for r in (noisy, clean)]
    cfg = build_model(TrainConfig(preset="tiny-cpu"), seed=0).cfg
    emb = {"k": torch.zeros(cfg.sampling.inter_segments, cfg.inter_dim)}
    ds = ClipDataset(rows, emb, cfg.sampling, 1, seed=3, salt="train", storage_options={}, with_reference=True)
    for epoch in (0, 2):
        ds.set_epoch(epoch)
        clips_noisy, *_, ref_noisy = ds[(0, 7)]  # an aligned draw: both rows sample at draw 7
        clips_clean, *_, ref_clean = ds[(1, 7)]
        assert torch.equal(ref_noisy, clips_clean) and torch.equal(ref_clean, clips_clean)
        diff = (clips_noisy.float() - ref_noisy.float()).abs().mean()
        assert 5 < diff < 60, diff  # the noisy version at the same positions: only the noise differs
    plain = ClipDataset(rows, emb, cfg.sampling, 1, seed=3, salt="train", storage_options={})
    plain.set_epoch(2)
    assert len(plain[(0, 7)]) == 4 and torch.equal(plain[(0, 7)][0], clips_noisy)  # the same draw without it
    with pytest.raises(ValueError, match="reference video for every training row"):
        ClipDataset([{**rows[0], "reference": ""}], emb, cfg.sampling, 1, seed=3, salt="train", storage_options={},
                    with_reference=True)


def test_the_fidelity_standardisation_is_fitted_on_a_sample_of_videos_not_one_batch(sets):
    from model.pretext import FidelityHead
    from pipeline.training.data import ClipDataset
    from pipeline.training.loop import fit_standardisation

    df = sets["train"]
    clean = dict(zip(df["video_id"], df["uri"]))
    rows = [{"video_id": r.video_id, "uri": r.uri, "mos": r.mos, "inter_key": "k",
             "reference": clean[r.video_id.split("_")[0] + "_n0"]} for r in df.itertuples()]
    cfg = build_model(TrainConfig(preset="tiny-cpu"), seed=0).cfg
    emb = {"k": torch.zeros(cfg.sampling.inter_segments, cfg.inter_dim)}
    ds = ClipDataset(rows, emb, cfg.sampling, 1, seed=3, salt="standardise", storage_options={}, with_reference=True)
    head = FidelityHead(cfg.intra_dim, cfg.swin)
    assert fit_standardisation(ds, None, head, make_generator(5), videos=len(rows) + 10) == len(rows)  # all
    every = torch.cat([head.statistics(ds[i][0], ds[i][4]) for i in range(len(rows))]).reshape(-1, 2)
    assert torch.allclose(head.mean, every.mean(0)) and torch.allclose(head.std, every.std(0))
    # one batch of clean-ish versions (what the first batch could be) is far narrower than the sample
    first = FidelityHead(cfg.intra_dim, cfg.swin)
    mild = [i for i, r in enumerate(rows) if r["video_id"].endswith(("_n0", "_n1"))]
    first.targets(torch.cat([ds[i][0] for i in mild]), torch.cat([ds[i][4] for i in mild]))
    assert first.std[0] < 0.5 * head.std[0], (first.std, head.std)
    # a part of the sample, replayable with the same generator seed
    again = FidelityHead(cfg.intra_dim, cfg.swin)
    assert fit_standardisation(ds, None, again, make_generator(5), videos=4) == 4
    other = FidelityHead(cfg.intra_dim, cfg.swin)
    fit_standardisation(ds, None, other, make_generator(5), videos=4)
    assert torch.equal(again.std, other.std) and not torch.equal(again.std, head.std)
    with pytest.raises(ValueError, match="statistics of at least 2 cells"):
        head.fit(torch.zeros(5, 3))


def test_a_run_with_the_fidelity_and_condition_targets_trains_them_and_resumes_them(ray_local, sets, tmp_path):
    train_df = sets["train"].assign(reference=lambda d: d["uri"].str.replace(r"_n\d\.mp4$", "_n0.mp4", regex=True),
                                    noise=lambda d: d["video_id"].str[-2:])  # the condition: n0 .. n5
    cfg = TrainConfig(preset="tiny-cpu", epochs=1, batch_size=4, group_column="dataset", group_size=2,
                      align_groups=True, loss=LossConfig(kind="margin"), val_clips=1, seed=3, fidelity_weight=1.0,
                      texture_weight=1.0, condition_weight=1.0, condition_column="noise",
                      repeat_weight=1.0, repeat_levels=((2, 0.64), (4, 1.64)), repeat_skip=("n0",),
                      repeat_inter=True)
    out = tmp_path / "run"
    run = TrainRun(workers=1, cache_uri=sets["cache"])
    with pytest.raises(ValueError, match="`reference` column"):
        train(sets["train"], str(out), cfg, run, val=sets["val"])
    with pytest.raises(ValueError, match="'noise' column"):
        train(train_df.drop(columns="noise"), str(out), cfg, run, val=sets["val"])
    first = train(train_df, str(out), cfg, run, val=sets["val"])["epochs"]
    assert first[1]["train_fidelity_loss"] > 0 and first[1]["train_texture_loss"] > 0
    assert 0 < first[1]["train_condition_loss"] < 3 * np.log(len(NOISE))  # cross-entropy over the 6 conditions
    assert first[1]["train_repeat_loss"] >= 0 and "frame-repeat hinge" in epoch_line(first[1])
    state = _latest_state(out)
    assert set(state["fidelity"]) == {"proj.weight", "proj.bias", "mean", "std", "fitted"}
    assert state["condition"]["proj.weight"].shape[0] == len(NOISE)
    assert bool(state["fidelity"]["fitted"])
    again = train(train_df, str(out), dataclasses.replace(cfg, epochs=2), run, val=sets["val"])["epochs"]
    assert [r["epoch"] for r in again] == [0, 1, 2] and again[:2] == first  # resumed, not restarted
    later = _latest_state(out)["fidelity"]
    assert torch.equal(later["mean"], state["fidelity"]["mean"])  # the standardisation is kept
    assert not torch.equal(later["proj.weight"], state["fidelity"]["proj.weight"])  # and the head trains on


def test_best_keeps_the_start_when_training_only_makes_things_worse(tmp_path):
    """publish: epoch 0 (the validated start) competes for best.pt, so a run whose epochs all score lower
    keeps its start as best, while last.pt follows the latest epoch."""
    from pipeline.training.history import publish

    start, _ = create_model("tiny-cpu", init_seed=1)
    worse, inter = create_model("tiny-cpu", init_seed=2)
    cfg, out = TrainConfig(preset="tiny-cpu"), str(tmp_path)
    best = publish(out, {}, {"raw": start, "ema": start}, inter,
                   {"epoch": 0, "val_raw_srcc": 0.80, "val_ema_srcc": 0.79}, None, cfg, 0)
    best = publish(out, {}, {"raw": worse, "ema": worse}, inter,
                   {"epoch": 1, "val_raw_srcc": 0.70, "val_ema_srcc": 0.75}, best, cfg, 0)
    assert best == {"epoch": 0, "weights": "raw", "val_srcc": 0.80}
    kept = torch.load(tmp_path / "best.pt", weights_only=True)
    assert kept["metadata"]["epoch"] == 0
    k = next(iter(kept["securevqa"]))
    assert torch.equal(kept["securevqa"][k], start.state_dict()[k])
    assert torch.load(tmp_path / "last.pt", weights_only=True)["metadata"]["epoch"] == 1
    best = publish(out, {}, {"raw": worse, "ema": worse}, inter,
                   {"epoch": 2, "val_raw_srcc": 0.81, "val_ema_srcc": 0.70}, best, cfg, 0)
    assert best["epoch"] == 2 and torch.load(tmp_path / "best.pt", weights_only=True)["metadata"]["epoch"] == 2


def test_a_warmup_as_long_as_the_run_is_refused_before_stage_1(tmp_path):
    """`--epochs 1` with a one-epoch warm-up fails at once, naming both options, instead of in the Ray Train
    controller after stage 1 (the videos here do not exist: stage 1 would fail on them first)."""
    df = pd.DataFrame({"video_id": [f"v{i}" for i in range(40)], "uri": [str(tmp_path / f"v{i}.mp4") for i in range(40)],
                       "mos": np.linspace(1, 5, 40)})
    with pytest.raises(ValueError, match=r"warm-up \(1.0 epochs\) must be shorter than the run \(1 epochs\)"):
        train(df, str(tmp_path / "run"), TrainConfig(preset="tiny-cpu", epochs=1, warmup_epochs=1.0, batch_size=4),
              TrainRun(workers=1))
    assert not (tmp_path / "run" / "inter").exists()


def test_the_difference_stem_is_calibrated_saved_and_the_fusion_starts_blind_to_it(sets, tmp_path):
    from model.checkpoint import read_checkpoint
    from pipeline.stages.options import ModelSpec
    from pipeline.training.loop import build_model
    from pipeline.training.run import calibrate_inter

    with pytest.raises(ValueError, match="calibrate_inter"):
        TrainConfig(preset="tiny-cpu", difference_stem=4)
    uri = str(tmp_path / "inter_calibrated.pt")
    calibrate_inter(sets["train"], ModelSpec(preset="tiny-cpu"), uri, videos=2, seed=0, difference_stem=4)
    ckpt = read_checkpoint(uri)
    assert ckpt["metadata"]["inter_calibration"]["difference_stem"] == 4
    assert ckpt["inter"]["blocks.0.conv.weight"].sum(dim=2).abs().max() < 1e-5
    cfg = TrainConfig(preset="tiny-cpu", calibrate_inter=2, difference_stem=4)
    vqa = build_model(cfg, seed=0)
    mix = vqa.head.fusion.mix.weight
    assert mix[:, vqa.cfg.intra_dim:].abs().max() == 0 and mix[:, :vqa.cfg.intra_dim].abs().max() > 0
    assert build_model(dataclasses.replace(cfg, difference_stem=0, calibrate_inter=0), seed=0) \
        .head.fusion.mix.weight[:, vqa.cfg.intra_dim:].abs().max() > 0
