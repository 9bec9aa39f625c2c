import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.metrics import group_offsets, quality_metrics
from pipeline.io.table import KeyedTable
from pipeline.report.build import build_report
from pipeline.report.summary import compare_scores, load_scores, summarize

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def synthetic_scores(n=60, seed=0, mos=True, failures=(3, 18, 41, 56)):
    rng = np.random.default_rng(seed)
    dataset = np.where(np.arange(n) < n // 2, "konvid", "livevqc")
    m = np.where(dataset == "konvid", rng.uniform(1, 5, n), rng.uniform(0, 100, n))
    z = (m - np.where(dataset == "konvid", 3, 50)) / np.where(dataset == "konvid", 1.15, 29)
    score = 0.5 + 0.1 * z + rng.normal(0, 0.04, n)
    rows = []
    for i in range(n):
        failed = i in failures
        rows.append({
            "video_id": f"v{i:03d}",
            "uri": f"s3://videos/{dataset[i]}/v{i:03d}.mp4",
            "score": None if failed else float(score[i]),
            "status": "error" if failed else "ok",
            "error": (("DecodeError: corrupt stream at frame 12\nTraceback..." if i % 2 else "Timeout after 300 s")
                      if failed else None),
            "mos": float(m[i]) if mos else float("nan"),
            "dataset": dataset[i],
            "clip_scores": [] if failed else [float(score[i]) + d for d in (-0.01, 0.0, 0.01)],
            "model_version": "securevqa-1.0",
        })
    if mos and n > 7:
        rows[7]["mos"] = float("nan")  # one unlabelled video
    return pd.DataFrame(rows)


def read_png(path: Path | bytes):
    import io

    import matplotlib.image as mpimg

    data = path.read_bytes() if isinstance(path, Path) else path
    assert data[:8] == PNG_SIG
    assert len(data) > 10_000
    return mpimg.imread(io.BytesIO(data), format="png")


def test_report_two_datasets(tmp_path):
    df = synthetic_scores()
    out = tmp_path / "rep"
    rep = build_report(df, str(out))
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == rep

    assert rep["n_videos"] == 60 and rep["n_ok"] == 56 and rep["n_failed"] == 4
    assert rep["n_with_mos"] == 59 and rep["has_mos"]
    ok = df[df.status == "ok"]
    expected = quality_metrics(ok.score.to_numpy(float), ok.mos.to_numpy(float))
    assert rep["n_metrics"] == expected["n"] == 55
    for k in ("srcc", "plcc", "krcc", "rmse"):
        assert rep[k] == pytest.approx(expected[k])
    assert rep["srcc"] > 0.5  # pooled over two MOS scales

    assert set(rep["datasets"]) == {"konvid", "livevqc"}
    for name, d in rep["datasets"].items():
        sub = df[(df.dataset == name)]
        sub_ok = sub[sub.status == "ok"]
        exp = quality_metrics(sub_ok.score.to_numpy(float), sub_ok.mos.to_numpy(float))
        assert d["n_videos"] == len(sub) == 30
        assert d["n_ok"] == len(sub_ok) and d["n_failed"] == 30 - len(sub_ok)
        assert d["n_metrics"] == exp["n"]
        for k in ("srcc", "plcc", "krcc", "rmse"):
            assert d[k] == pytest.approx(exp[k])
        assert d["srcc"] > 0.8
        assert d["score"]["mean"] == pytest.approx(sub_ok.score.mean())
    # RMSE after rescale is in each dataset's MOS units
    assert rep["datasets"]["konvid"]["rmse"] < 1 < rep["datasets"]["livevqc"]["rmse"]
    # offsets between datasets: one least-squares line over both, each dataset's mean residual
    off = group_offsets(ok.score.to_numpy(float), ok.mos.to_numpy(float), ok.dataset.to_numpy())
    assert rep["dataset_offsets"]["offsets"] == pytest.approx(off["offsets"])
    assert rep["dataset_offsets"]["srcc"] == pytest.approx(off["srcc"])

    s = rep["score"]
    scored = ok.score.to_numpy(float)
    assert s["count"] == 56
    assert s["mean"] == pytest.approx(scored.mean()) and s["std"] == pytest.approx(scored.std())
    assert s["min"] == pytest.approx(scored.min()) and s["max"] == pytest.approx(scored.max())
    assert s["median"] == pytest.approx(np.median(scored))
    assert s["q05"] <= s["q25"] <= s["median"] <= s["q75"] <= s["q95"]

    assert rep["failure_kinds"] == {"unclassified": 4}  # this table has no error_code column
    assert [e["video_id"] for e in rep["failure_examples"]["unclassified"]] == ["v003", "v018", "v041"]
    assert rep["failure_examples"]["unclassified"][0]["error"] == "DecodeError: corrupt stream at frame 12"
    assert rep["model_versions"] == {"securevqa-1.0": 60}
    assert rep["clip_scores"]["clips_per_video_median"] == 3
    assert rep["clip_scores"]["within_video_std_mean"] == pytest.approx(np.std([-0.01, 0, 0.01]))

    md = (out / "report.md").read_text()
    assert "## Failures" in md and "Timeout after 300 s" in md and "`v003`" in md and "4 of 60 videos failed" in md
    assert "| konvid |" in md and "| livevqc |" in md
    assert "Offsets between datasets" in md and f"konvid {off['offsets']['konvid']:+.2f}" in md
    assert "(score_hist.png)" in md and "(score_vs_mos.png)" in md
    hist = read_png(out / "score_hist.png")
    scatter = read_png(out / "score_vs_mos.png")
    assert hist.shape[:2] == (540, 720) and scatter.shape[:2] == (540, 720)
    assert rep["files"] == {"score_hist": "score_hist.png", "score_vs_mos": "score_vs_mos.png",
                            "report_md": "report.md", "report_json": "report.json"}


def test_bootstrap_intervals(tmp_path):
    rep = build_report(synthetic_scores(), str(tmp_path), n_boot=40, seed=1)
    lo, hi = rep["srcc_ci95"]
    assert lo <= rep["srcc"] <= hi
    assert "srcc_ci95" in rep["datasets"]["konvid"]
    assert "bootstrap 95%" in (tmp_path / "report.md").read_text()


def test_no_mos_single_dataset(tmp_path):
    df = synthetic_scores(mos=False).drop(columns=["dataset", "clip_scores"])
    rep = build_report(df, str(tmp_path))
    assert not rep["has_mos"] and rep["n_with_mos"] == 0
    assert not any(k in rep for k in ("srcc", "plcc", "krcc", "rmse", "n_metrics"))
    assert list(rep["datasets"]) == ["(none)"]
    assert "srcc" not in rep["datasets"]["(none)"]
    assert (tmp_path / "score_hist.png").exists() and not (tmp_path / "score_vs_mos.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "No MOS labels" in md and "score_vs_mos.png" not in md
    # also without the mos column at all
    rep2 = build_report(df.drop(columns=["mos"]), str(tmp_path / "b"))
    assert not rep2["has_mos"] and rep2["n_ok"] == 56


def test_all_failed(tmp_path):
    df = synthetic_scores(n=6, failures=range(6))
    df["score"] = np.nan
    df.loc[0, "status"] = "ok"  # claims ok but has no score: still a failure
    df.loc[0, "error"] = None
    rep = build_report(df, str(tmp_path))
    assert rep["n_ok"] == 0 and rep["n_failed"] == 6 and rep["failure_rate"] == 1.0
    assert rep["has_mos"] and rep["srcc"] is None and rep["n_metrics"] == 0  # JSON null, not NaN
    assert rep["score"]["mean"] is None
    assert rep["failure_kinds"]["no_score"] == 1
    assert sum(rep["failure_kinds"].values()) == 6
    assert not (tmp_path / "score_hist.png").exists() and not (tmp_path / "score_vs_mos.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "No video was scored" in md and "6 of 6 videos failed" in md
    json.loads((tmp_path / "report.json").read_text())  # strict JSON


def test_empty_table(tmp_path):
    rep = build_report(pd.DataFrame({"key": pd.Series([], dtype=str)}), str(tmp_path))
    assert rep["n_videos"] == 0 and rep["n_ok"] == 0 and rep["datasets"] == {} and rep["failure_kinds"] == {}
    assert "empty" in (tmp_path / "report.md").read_text()


def test_odd_values(tmp_path):
    df = synthetic_scores(n=12, failures=(1,))
    df.loc[2, "dataset"] = None
    df.loc[1, "error"] = "bad | pipe\nsecond line"
    df.loc[5, "model_version"] = "securevqa-0.9"
    df["score"] = df["score"].astype(object)
    rep = summarize(df)
    assert "(none)" in rep["datasets"] and rep["datasets"]["(none)"]["n_videos"] == 1
    assert rep["datasets"]["(none)"]["srcc"] is None  # one video: undefined
    assert rep["model_versions"] == {"securevqa-0.9": 1, "securevqa-1.0": 11}
    build_report(df, str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "bad \\| pipe" in md and "second line" not in md and "several model versions" in md


def test_load_scores_parquet_dir_and_delta_table(tmp_path):
    df = synthetic_scores(n=10)
    t = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(t, tmp_path / "one.parquet")
    assert load_scores(str(tmp_path / "one.parquet"))["video_id"].tolist() == df.video_id.tolist()
    d = tmp_path / "dir"
    d.mkdir()
    pq.write_table(t.slice(0, 4), d / "a.parquet")
    pq.write_table(t.slice(4), d / "b.parquet")
    (d / "_SUCCESS").write_text("")
    assert sorted(load_scores(str(d))["video_id"]) == sorted(df.video_id)
    store = KeyedTable(str(tmp_path / "store"))
    t = t.append_column("key", t.column("video_id"))
    store.commit(t.slice(0, 5))
    store.commit(t.slice(5))
    loaded = load_scores(str(tmp_path / "store"))
    assert sorted(loaded["video_id"]) == sorted(df.video_id) and "key" in loaded
    rep = summarize(loaded)
    assert rep["n_videos"] == 10 and rep["n_ok"] == summarize(df)["n_ok"]
    with pytest.raises(FileNotFoundError):
        load_scores(str(tmp_path / "missing"))


def test_s3(s3_endpoint):
    import s3fs

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("reports")
    df = synthetic_scores()
    with fs.open("reports/in/scores.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), f)
    loaded = load_scores("s3://reports/in", opts)
    assert len(loaded) == 60
    rep = build_report(loaded, "s3://reports/out/run1", opts)
    fs.invalidate_cache()
    names = {n.rsplit("/", 1)[-1] for n in fs.ls("reports/out/run1")}
    assert names == {"report.json", "report.md", "score_hist.png", "score_vs_mos.png"}
    assert json.loads(fs.cat_file("reports/out/run1/report.json")) == rep
    assert read_png(fs.cat_file("reports/out/run1/score_vs_mos.png")).shape[:2] == (540, 720)
    assert math.isclose(rep["srcc"], summarize(df)["srcc"])


def test_failures_are_grouped_by_kind_not_by_message(tmp_path):
    """On a catalog every message names its own file; the kinds are few and stable."""
    df = synthetic_scores(n=12, failures=range(9))
    df["error_code"] = None
    for i in range(9):
        code, msg = (("truncated", f"truncated or corrupt video: could only decode {10 + i} of 90 frames: /d/v{i}.mp4")
                     if i < 6 else ("not_found", f"file not found: /d/v{i}.mp4"))
        df.loc[i, ["error_code", "error"]] = code, msg
    rep = build_report(df, str(tmp_path))
    assert rep["failure_kinds"] == {"truncated": 6, "not_found": 3}
    assert [e["video_id"] for e in rep["failure_examples"]["not_found"]] == ["v006", "v007", "v008"]
    assert rep["failure_examples"]["truncated"][0]["error"].endswith("/d/v0.mp4")
    md = (tmp_path / "report.md").read_text()
    assert "9 of 12 videos failed, 2 kind(s) of failure" in md and "| `truncated` | 6 |" in md
    assert "the file does not exist" in md


def _table(scores: dict[str, float], failed: tuple[str, ...] = ()) -> pd.DataFrame:
    return pd.DataFrame({"video_id": list(scores), "key": list(scores), "score": list(scores.values()),
                         "status": ["error" if v in failed else "ok" for v in scores],
                         "mos": [1.0 + i for i in range(len(scores))]})


def test_compare_scores_counts_new_dropped_and_changed_videos():
    before = _table({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0})
    after = _table({"b": 2.0, "c": 3.5, "d": 3.0, "e": 5.0})
    c = compare_scores(before, after)
    assert (c["new"], c["dropped"], c["in_both"], c["scored_in_both"], c["changed"]) == (1, 1, 3, 3, 2)
    assert c["delta"]["mean"] == pytest.approx((0.0 + 0.5 - 1.0) / 3)
    assert c["delta"]["max_abs"] == pytest.approx(1.0)
    assert [e["video_id"] for e in c["largest_changes"]] == ["d", "c"]  # largest first
    failed = compare_scores(before, _table({"b": 2.0, "c": 3.5, "d": 3.0}, failed=("c",)))
    assert (failed["scored_in_both"], failed["changed"], failed["status_changed"]) == (2, 1, 1)


def test_report_compares_two_versions_of_a_delta_table(tmp_path, capsys):
    from jobs.cli import main as cli

    uri = str(tmp_path / "catalog")
    table = KeyedTable(uri)
    v1 = table.overwrite(pa.Table.from_pandas(_table({"a": 1.0, "b": 2.0, "c": 3.0}), preserve_index=False))
    table.overwrite(pa.Table.from_pandas(_table({"a": 1.0, "b": 2.5, "d": 4.0}), preserve_index=False))
    assert cli(["report", "--scores", uri, "--output", str(tmp_path / "rep"), "--compare-to", str(v1)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    latest = f"version {v1 + 1} (latest)"
    assert printed["table"] == latest
    assert printed["changed_since"] == {"labels": [f"version {v1}", latest], "new": 1, "dropped": 1,
                                       "scored_in_both": 2, "changed": 1}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"## Changes from version {v1} to {latest}" in md and "score_change.png" in md
    assert f"Table: {latest}." in md
    assert (tmp_path / "rep" / "score_change.png").stat().st_size > 1000
    # --as-of the first version reports that version's rows
    assert cli(["report", "--scores", uri, "--output", str(tmp_path / "old"), "--as-of", str(v1)]) == 0
    assert json.loads((tmp_path / "old" / "report.json").read_text())["n_videos"] == 3
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_videos"] == 3


def test_report_time_travel_errors_say_what_is_wrong(tmp_path, capsys):
    from jobs.cli import main as cli

    pq.write_table(pa.Table.from_pandas(_table({"a": 1.0})), tmp_path / "plain.parquet")
    assert cli(["report", "--scores", str(tmp_path / "plain.parquet"), "--output", str(tmp_path / "r"),
                "--as-of", "3"]) == 2
    assert "not a Delta table" in capsys.readouterr().err
    uri = str(tmp_path / "t")
    KeyedTable(uri).overwrite(pa.Table.from_pandas(_table({"a": 1.0}), preserve_index=False))
    assert cli(["report", "--scores", uri, "--output", str(tmp_path / "r"), "--as-of", "7"]) == 2
    assert "has no version 7: its latest is 1" in capsys.readouterr().err
    assert cli(["report", "--scores", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]) == 2
    assert "the path does not exist" in capsys.readouterr().err
    assert cli(["vacuum", str(tmp_path / "plain.parquet")]) == 2
    assert "no Delta table at" in capsys.readouterr().err
    assert cli(["report", "--scores", uri, "--output", str(tmp_path / "r"), "--as-of", "2001-01-01"]) == 2
    assert "as of 2001-01-01" in capsys.readouterr().err
