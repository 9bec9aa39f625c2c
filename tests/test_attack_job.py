"""`securevqa attack` end to end on a local Ray: results, targets, summary, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from jobs.cli import main as cli
from model.security.attacks import AttackSpec, score_reversed_targets
from model.security.defense import Defenses
from pipeline.io.table import KeyedTable
from pipeline.security.attack import AttackPlan, run_attacks
from pipeline.stages.options import ModelSpec, RunOptions
from tests.helpers import videos as tv
from tests.helpers.micro import micro_checkpoint

PLAN = AttackPlan(defenses=(Defenses.parse("none"), Defenses.parse("securevqa")),
                  attacks=(AttackSpec.parse("black-box:gamma=5"), AttackSpec.parse("white-box:steps=2")),
                  max_frames=2, n_boot=50)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[pd.DataFrame, ModelSpec]:
    d = tmp_path_factory.mktemp("attackset")
    rows = []
    for i, crf in enumerate([10, 25, 35, 45, 51]):
        path = tv.write_video(d / f"v{i}.mp4", 3, 120, 112, options={"crf": str(crf)})
        rows.append({"video_id": f"v{i}", "uri": str(path), "mos": 5.0 - i, "dataset": "synthetic"})
    rows.append({"video_id": "gone", "uri": str(d / "gone.mp4"), "mos": 3.0, "dataset": "synthetic"})
    spec = ModelSpec(checkpoint=str(micro_checkpoint(d / "micro.pt")))
    return pd.DataFrame(rows), spec


def test_attack_job_results_targets_summary_and_resume(ray_local, labelled, tmp_path, caplog):
    manifest, spec = labelled
    out = str(tmp_path / "attack")
    opts = RunOptions(actors=1, seed=0, batch_size=2)
    s = run_attacks(manifest, out, spec, PLAN, opts)
    # 6 videos x 2 defense configurations scored clean; the missing one fails and is left out of the attacks
    assert (s.clean.videos, s.clean.done, s.clean.failed) == (12, 10, 2)
    assert (s.attack.videos, s.attack.done, s.attack.failed) == (20, 20, 0)
    assert "gone left out: file not found" in caplog.text  # a warning of the securevqa.security logger

    res = KeyedTable(f"{out}/results").read().to_pandas()
    assert len(res) == 20 and set(res["video_id"]) == {f"v{i}" for i in range(5)}
    for col in ("clean_score", "adv_score", "target", "linf", "rms", "queries", "q_mos", "seconds"):
        assert res[col].notna().all(), col
    bb, wb = res[res["attack"].str.startswith("black")], res[res["attack"].str.startswith("white")]
    assert (bb["linf"] <= 5 + 1e-6).all() and (bb["queries"] > 2).all()
    assert (wb["rms"] <= 1 + 1e-6).all() and (wb["queries"] == 2 * 2).all()  # 2 steps x 2 frames
    assert set(res["frames"]) == {2}
    # targets are the published rule over this set's clean scores, per defense configuration
    for d, g in res.groupby("defenses"):
        g = g.drop_duplicates("video_id").sort_values("video_id")
        assert g["q_mos"].tolist() == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
        want = score_reversed_targets(g["clean_score"].to_numpy(), g["q_mos"].to_numpy()).target
        assert g["target"].to_numpy() == pytest.approx(want)

    table = pd.read_csv(f"{out}/summary.csv")
    assert list(zip(table["attack"], table["defenses"])) == [
        ("black-box:gamma=5", "none"), ("black-box:gamma=5", "securevqa"),
        ("white-box:norm=l2,eps=1,steps=2,lr=0.003", "none"), ("white-box:norm=l2,eps=1,steps=2,lr=0.003", "securevqa")]
    row = table.iloc[0]
    g = res[(res["defenses"] == "none") & (res["attack"] == "black-box:gamma=5")]
    r = np.mean(np.log(np.abs(g["clean_score"] - g["target"]) / (np.abs(g["adv_score"] - g["clean_score"]) + 1e-12)))
    assert row["n"] == 5 and row["r"] == pytest.approx(r) and row["r_low"] <= row["r"] <= row["r_high"]
    md = (tmp_path / "attack" / "summary.md").read_text()
    assert "## black-box:gamma=5" in md and "| securevqa | 5 |" in md and "clean_vs_adv.png" in md
    assert (tmp_path / "attack" / "clean_vs_adv.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "attack" / "summary.json").read_text())) == 4

    # resume: the same plan again computes nothing; one more attack computes only its rows
    again = run_attacks(manifest, out, spec, PLAN, opts)
    # (failed rows are committed too: --retry-errors recomputes them)
    assert (again.clean.skipped, again.attack.skipped, again.attack.done) == (12, 20, 0)
    more = AttackPlan(defenses=PLAN.defenses, attacks=(*PLAN.attacks, AttackSpec.parse("black-box:gamma=1")),
                      max_frames=2, n_boot=50)
    third = run_attacks(manifest, out, spec, more, opts)
    assert (third.attack.videos, third.attack.skipped, third.attack.done) == (30, 20, 10)
    assert len(pd.read_csv(f"{out}/summary.csv")) == 6


def test_attack_seed_replays_results(ray_local, labelled, tmp_path):
    manifest, spec = labelled
    plan = AttackPlan(defenses=(Defenses(),), attacks=(AttackSpec.parse("black-box:gamma=3"),), max_frames=1,
                      n_boot=10)
    tables = []
    for name in ("a", "b"):
        run_attacks(manifest.head(4), str(tmp_path / name), spec, plan, RunOptions(actors=1, seed=7, batch_size=4))
        t = KeyedTable(str(tmp_path / name / "results")).read().to_pandas().sort_values("video_id")
        tables.append(t[["clean_score", "adv_score", "target", "queries", "rms"]].reset_index(drop=True))
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_attack_cli_and_bad_input(ray_local, labelled, tmp_path, capsys):
    manifest, spec = labelled
    csv = tmp_path / "m.csv"
    manifest.head(4).to_csv(csv, index=False)
    base = ["attack", "--input", str(csv), "--output", str(tmp_path / "o"), "--checkpoint", spec.checkpoint,
            "--max-frames", "1", "--seed", "0", "--actors", "1", "--n-boot", "20"]
    assert cli([*base, "--defenses", "none", "--attack", "black-box:gamma=2"]) == 0
    out = capsys.readouterr().out
    assert "attack: 1 defense configuration(s) x 1 attack(s): none | black-box:gamma=2" in out
    assert "attack: 4 videos: 4 done, 0 failed, 0 skipped (already done)" in out
    with pytest.raises(SystemExit, match="unknown attack 'grey-box'"):
        cli([*base, "--attack", "grey-box"])
    with pytest.raises(SystemExit, match="unknown defense"):
        cli([*base, "--defenses", "guardian+magic"])
    unlabelled = tmp_path / "u.csv"
    manifest.head(4).drop(columns="mos").to_csv(unlabelled, index=False)
    with pytest.raises(ValueError, match="labelled manifest"):
        cli(["attack", "--input", str(unlabelled), "--output", str(tmp_path / "u"), "--checkpoint", spec.checkpoint])


def test_attack_job_on_s3(ray_local, s3_endpoint, labelled, tmp_path, capsys):
    """Inputs, results and summary on S3 (moto on loopback), through the CLI as under `ray job submit`."""
    import s3fs

    manifest, spec = labelled
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("attackset")
    rows = manifest.head(4).copy()
    for i, r in rows.iterrows():
        fs.put(r["uri"], f"attackset/videos/{r['video_id']}.mp4")
        rows.loc[i, "uri"] = f"videos/{r['video_id']}.mp4"
    with fs.open("attackset/manifest.csv", "w") as f:
        rows.to_csv(f, index=False)
    fs.put(spec.checkpoint, "attackset/micro.pt")
    io = ["--endpoint-url", s3_endpoint, "--storage-option", "key=testing", "--storage-option", "secret=testing"]
    args = ["attack", "--input", "s3://attackset/manifest.csv", "--output", "s3://attackset/out",
            "--checkpoint", "s3://attackset/micro.pt", "--attack", "black-box:gamma=2", "--attack", "none",
            "--max-frames", "1", "--seed", "0", "--actors", "1", "--n-boot", "20", *io]
    assert cli(args) == 0
    assert "attack: 16 videos: 16 done, 0 failed, 0 skipped (already done)" in capsys.readouterr().out
    for name in ("summary.md", "summary.csv", "summary.json", "clean_vs_adv.png"):
        assert fs.exists(f"attackset/out/{name}"), name
    so = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    res = KeyedTable("s3://attackset/out/results", so).read().to_pandas()
    assert len(res) == 16 and (res["status"] == "ok").all()
    assert (res.loc[res["attack"] == "none", "queries"] == 0).all()
    assert cli(args) == 0  # again: nothing left to do
    assert "attack: 16 videos: 0 done, 0 failed, 16 skipped (already done)" in capsys.readouterr().out
