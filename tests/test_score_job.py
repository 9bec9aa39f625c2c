"""The Ray pipeline end to end: bad videos, idempotent re-runs, resume after a kill, rescore, S3."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs.cli import main as cli
from pipeline.io.table import KeyedTable
from pipeline.stages.driver import load_table
from pipeline.stages.inter import extract_inter
from pipeline.stages.options import ModelSpec, RunOptions
from pipeline.stages.scoring import score
from tests.helpers import videos as tv
from tests.helpers.engines import ENGINES
from tests.helpers.micro import MICRO
from tests.helpers.procs import cli_subprocess, kill_tree

# The resume tests kill a job after its first commit: the tiny preset's seconds a video let the kill land
# midway. The other tests score with the micro model (the `spec` fixture): every branch, far less compute.
TINY = ModelSpec(preset="tiny")
CLIPS = MICRO.sampling.test_clips

GOOD = {  # name -> writer; each must come out with status ok
    "normal": tv.normal_clip,
    "short_wraps": lambda d: tv.write_video(d / "short.mp4", 12, 160, 96),  # < one micro clip (8 x 2 frames)
    "tiny_64x48": tv.tiny_clip,
    "portrait": tv.portrait_clip,
    "rotated": tv.rotated_clip,
    "ten_bit": tv.ten_bit_clip,
    "yuv444": tv.yuv444_clip,
    "vfr": tv.vfr_clip,
    # files from the field (issue 13; tests/test_field_cases.py checks their frames)
    "cover_art": tv.cover_art_clip,
    "picture_then_video": tv.picture_then_video,
    "edit_list": tv.edit_list_clip,
    "mpegts": tv.mpegts_clip,
    "raw_h264": tv.raw_stream_clip,
    "webm_live": tv.live_webm_clip,
}
BAD = {  # name -> (writer, words the error message must contain, error_code)
    "missing": (tv.missing_path, "not found", "not_found"),
    "zero_bytes": (tv.empty_file, "empty", "empty"),
    "truncated": (tv.truncated_clip, "truncated", "truncated"),
    "not_video": (tv.text_file, "not a video", "not_a_video"),
    "audio_only": (tv.audio_only, "no video stream", "no_video_stream"),
    "song_with_cover_art": (tv.cover_art_only, "only an attached picture", "no_video_stream"),
}


def _manifest(paths: dict[str, Path]) -> pd.DataFrame:
    return pd.DataFrame({"video_id": list(paths), "uri": [str(p) for p in paths.values()],
                         "mos": [float(i) for i in range(len(paths))], "dataset": ["test"] * len(paths)})


@pytest.fixture(scope="module")
def spec(micro_ckpt) -> ModelSpec:
    return ModelSpec(checkpoint=str(micro_ckpt))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> pd.DataFrame:
    d = tmp_path_factory.mktemp("zoo")
    paths = {}
    for name, write in GOOD.items():
        sub = d / name
        sub.mkdir()
        paths[name] = write(sub)
    for name, (write, *_) in BAD.items():
        sub = d / name
        sub.mkdir()
        paths[name] = write(sub)
    return _manifest(paths)


def test_every_video_gets_one_row_and_bad_videos_cost_nothing(ray_local, spec, zoo, tmp_path):
    opts = RunOptions(actors=1, batch_size=4, seed=0)
    cache, out = str(tmp_path / "cache"), str(tmp_path / "scores")
    s2, s1 = score(zoo, cache, out, spec, opts)
    assert (s1.videos, s1.done, s1.failed) == (len(zoo), len(GOOD), len(BAD))
    assert (s2.videos, s2.done, s2.failed) == (len(zoo), len(GOOD), len(BAD))
    table = load_table(out).set_index("video_id")
    assert sorted(table.index) == sorted(zoo["video_id"]) and table["key"].is_unique
    for name in GOOD:
        row = table.loc[name]
        assert row["status"] == "ok" and pd.isna(row["error"]), (name, row["error"])
        assert len(row["clip_scores"]) == CLIPS and abs(row["score"] - sum(row["clip_scores"]) / CLIPS) < 1e-6
    for name, (_, words, code) in BAD.items():
        row = table.loc[name]
        assert row["status"] == "error" and pd.isna(row["score"]), name
        assert words in row["error"] and row["error_code"] == code, (name, row["error"], row["error_code"])
    assert table.loc["portrait", "height"] > table.loc["portrait", "width"]
    assert table.loc["tiny_64x48", "width"] == 64
    # which stream was read, and how the file had to be read, are facts of the row
    assert (table.loc["picture_then_video", "stream"], table.loc["normal", "stream"]) == (1, 0)
    assert (table.loc["cover_art", "width"], table.loc["edit_list", "num_frames"]) == (160, 33)
    assert "no usable timestamps" in table.loc["raw_h264", "read_notes"]
    assert pd.isna(table.loc["normal", "read_notes"])
    assert table.loc["webm_live", "fps"] == pytest.approx(24.85, rel=0.01)

    # Re-running either stage recomputes nothing and duplicates no row.
    shards = (KeyedTable(cache).version(), KeyedTable(out).version())
    s2b, s1b = score(zoo, cache, out, spec, opts)
    assert (s1b.skipped, s1b.done + s1b.failed) == (len(zoo), 0)
    assert (s2b.skipped, s2b.done + s2b.failed) == (len(zoo), 0)
    assert (KeyedTable(cache).version(), KeyedTable(out).version()) == shards
    assert len(load_table(out)) == len(zoo)


def test_a_video_that_crashes_its_worker_gets_an_error_row_and_costs_no_other(ray_local, spec, tmp_path, monkeypatch):
    from ray import cloudpickle

    from pipeline.stages import inter as stages
    from pipeline.stages.driver import CRASHED
    from tests.helpers import crash_udf

    cloudpickle.register_pickle_by_value(crash_udf)  # Ray's workers need not import tests/
    monkeypatch.setattr(stages, "InterExtractor", crash_udf.CrashingExtractor)
    paths = {}
    for name in ("a", "b", "crash", "c", "d"):
        (tmp_path / name).mkdir()
        paths[name] = tv.write_video(tmp_path / name / f"{name}.mp4", 20, 64, 48)
    manifest = _manifest(paths)
    cache = str(tmp_path / "cache")
    summary = extract_inter(manifest, cache, spec, RunOptions(actors=1, batch_size=2, seed=0))
    assert (summary.done, summary.failed, summary.crashed) == (4, 1, 1)
    assert "1 failed (1 crashed their worker)" in summary.line()
    table = load_table(cache).set_index("video_id")
    assert sorted(table.index) == sorted(paths) and table["key"].is_unique
    assert table.loc["crash", "status"] == "error" and table.loc["crash", "error"] == CRASHED
    assert table.loc["crash", "error_code"] == "decoder_crashed"
    assert table.loc["crash", "uri"] == str(paths["crash"])
    assert (table.drop(index="crash")["status"] == "ok").all()


def test_http_sources_are_first_class_and_an_unidentifiable_one_costs_only_its_row(ray_local, spec, tmp_path,
                                                                                  http_catalog):
    """A CDN catalog: a plain HTTP server on loopback that sends Last-Modified but no ETag. Its videos
    are identified by Last-Modified and size; one served with neither gets an error row, and the run
    goes on (it used to abort before any video was scored)."""
    from pipeline.io.storage import content_key

    tv.write_video(tmp_path / "a.mp4", 20, 64, 48)
    tv.write_video(tmp_path / "b.mp4", 24, 64, 48)
    url = http_catalog  # serves tmp_path
    manifest = _manifest({"a": f"{url}/a.mp4", "b": f"{url}/b.mp4", "unversioned": f"{url}/noversion/a.mp4",
                          "gone": f"{url}/nothing.mp4", "local": tv.write_video(tmp_path / "c.mp4", 20, 64, 48)})
    key = content_key(f"{url}/a.mp4")
    assert key.startswith("obj:mtime=") and key.endswith(f"size={(tmp_path / 'a.mp4').stat().st_size}")
    cache = str(tmp_path / "cache")
    summary = extract_inter(manifest, cache, spec, RunOptions(actors=1, batch_size=2, seed=0))
    assert (summary.videos, summary.done, summary.failed) == (5, 3, 2)
    table = load_table(cache).set_index("video_id")
    assert sorted(table.index) == ["a", "b", "gone", "local", "unversioned"]
    assert (table.loc[["a", "b", "local"], "status"] == "ok").all()
    assert table.loc["a", "num_frames"] == 20 and table.loc["b", "num_frames"] == 24
    assert table.loc["unversioned", "error_code"] == "io_error"
    assert "cannot identify a version" in table.loc["unversioned", "error"]
    assert table.loc["gone", "error_code"] == "not_found"


def test_seed_replays_scores_and_no_seed_draws_fresh(ray_local, spec, zoo, tmp_path):
    ok = zoo[zoo["video_id"].isin(["normal", "short_wraps"])]
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", None)):
        score(ok, str(tmp_path / f"cache_{name}"), str(tmp_path / f"out_{name}"), spec,
              RunOptions(actors=1, batch_size=2, seed=seed))
        runs[name] = load_table(str(tmp_path / f"out_{name}")).set_index("video_id")["score"]
    assert runs["a"].equals(runs["b"])
    assert not runs["a"].equals(runs["c"])


def test_score_without_inter_cache_marks_videos_instead_of_computing(ray_local, spec, zoo, tmp_path):
    one = zoo[zoo["video_id"] == "normal"]
    s2, s1 = score(one, str(tmp_path / "cache"), str(tmp_path / "out"), spec, RunOptions(actors=1),
                   compute_missing_inter=False)
    assert s1 is None and s2.failed == 1
    assert "no inter embedding" in load_table(str(tmp_path / "out"))["error"].iloc[0]


def _kill_after_first_commit(proc: subprocess.Popen, table: KeyedTable, timeout: float = 240) -> int:
    """Kill the job (its whole process tree) once its output has committed rows; returns how many."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        committed = len(table.read(["key"]))
        if committed:
            kill_tree(proc)
            return committed
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    proc.kill()
    raise AssertionError(f"nothing committed before the job ended or timed out:\n{out[-3000:]}")


def _one_row_per_video_for_every_engine(uri: str, so: dict | None, videos: int, s3_endpoint: str | None = None):
    """DuckDB, Polars and deltalake read exactly the project's own rows: one per video."""
    ours = KeyedTable(uri, so).read().to_pandas().sort_values("key").reset_index(drop=True)
    assert len(ours) == ours["key"].nunique() == ours["video_id"].nunique() == videos, "no video committed twice"
    for name, read in ENGINES.items():
        theirs = read(uri, s3_endpoint)
        pd.testing.assert_frame_equal(theirs[["key", "video_id", "status"]], ours[["key", "video_id", "status"]],
                                      check_dtype=False, obj=name)


@pytest.mark.slow
def test_resume_after_kill_midway(ray_local, tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    paths = {}
    for i in range(6):
        sub = d / f"v{i}"
        sub.mkdir()
        paths[f"v{i}"] = tv.normal_clip(sub, num_frames=40)
    manifest = tmp_path / "manifest.csv"
    _manifest(paths).to_csv(manifest, index=False)
    cache = tmp_path / "cache"
    proc = cli_subprocess(["extract-inter", "--input", str(manifest), "--cache", str(cache), "--preset", "tiny",
                            "--actors", "1", "--batch-size", "1"])
    committed = _kill_after_first_commit(proc, KeyedTable(str(cache)))
    assert committed < 6, "the job must have been killed midway"
    summary = extract_inter(_manifest(paths), str(cache), TINY, RunOptions(actors=1, batch_size=2))
    assert summary.skipped >= committed and summary.done == 6 - summary.skipped
    table = load_table(str(cache))
    assert sorted(table["video_id"]) == sorted(paths)  # every video exactly once
    _one_row_per_video_for_every_engine(str(cache), None, 6)


def test_rescore_scores_only_new_or_changed_and_drops_deleted(ray_local, spec, tmp_path):
    d = tmp_path / "catalog"
    d.mkdir()
    for i in range(3):
        tv.write_video(d / f"v{i}.mp4", num_frames=40 + 5 * i)
    state = str(tmp_path / "state")
    args = ["rescore", "--input", str(d), "--state", state, "--checkpoint", spec.checkpoint, "--actors", "1",
            "--batch-size", "2"]
    catalog = str(Path(state) / "published" / "scores")  # a Delta table, one version per night
    assert cli([*args, "--history-days", "14"]) == 0
    first = load_table(catalog)
    assert sorted(first["video_id"]) == ["v0", "v1", "v2"] and (first["status"] == "ok").all()
    assert cli(args) == 0  # same catalog: nothing to compute
    run = pd.read_json(Path(state) / "published" / "run.json", typ="series")
    assert (run["scored_this_run"], run["embedded_this_run"], run["unchanged"]) == (0, 0, 3)
    night2 = run["catalog_version"]

    (d / "v0.mp4").unlink()  # deleted
    time.sleep(0.01)
    tv.write_video(d / "v1.mp4", num_frames=70)  # changed
    tv.write_video(d / "v3.mp4", num_frames=50)  # new
    assert cli(args) == 0
    run = pd.read_json(Path(state) / "published" / "run.json", typ="series")
    assert (run["new"], run["changed"], run["unchanged"], run["dropped"]) == (1, 1, 1, 1)
    assert run["maintenance"]["files_after"] == 3  # each of the three tables compacted into one file
    assert run["scored_this_run"] == 2
    table = load_table(catalog)
    assert sorted(table["video_id"]) == ["v1", "v2", "v3"] and table["uri"].is_unique
    assert table.set_index("video_id").loc["v1", "num_frames"] == 70
    assert (Path(state) / "published" / "report" / "report.json").exists()

    # History: the night before is still there (Delta time travel), and the report compares the two.
    before = load_table(catalog, version=night2).set_index("video_id")
    assert sorted(before.index) == ["v0", "v1", "v2"] and before.loc["v1", "num_frames"] == 45
    assert before.loc["v1", "score"] == first.set_index("video_id").loc["v1", "score"]  # the earlier score
    assert before.loc["v2", "score"] == table.set_index("video_id").loc["v2", "score"]
    assert KeyedTable(catalog).history(1)[0]["operation"] == "WRITE"
    props = DeltaTable(catalog).metadata().configuration
    assert props["delta.logRetentionDuration"] == "interval 30 days"  # the last run's (default) retention
    assert cli(["report", "--scores", catalog, "--output", str(tmp_path / "rep"), "--compare-to", str(night2)]) == 0
    change = json.loads((tmp_path / "rep" / "report.json").read_text())["comparison"]
    assert (change["new"], change["dropped"], change["in_both"]) == (1, 1, 2)
    assert change["changed"] == int((before.loc[["v1", "v2"], "score"]
                                     != table.set_index("video_id").loc[["v1", "v2"], "score"]).sum())
    assert (tmp_path / "rep" / "score_change.png").exists()


def test_full_flow_on_s3(ray_local, spec, s3_endpoint, tmp_path, capsys):
    import s3fs

    so = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("catalog")
    fs.mkdir("vqa")
    local = tmp_path / "src"
    local.mkdir()
    for i in range(3):
        tv.write_video(local / f"s{i}.mp4", num_frames=40)
        fs.put(str(local / f"s{i}.mp4"), f"catalog/videos/s{i}.mp4")
    (local / "bad.mp4").write_bytes(b"")
    fs.put(str(local / "bad.mp4"), "catalog/videos/bad.mp4")
    manifest = pd.DataFrame({"uri": [f"videos/s{i}.mp4" for i in range(3)] + ["videos/bad.mp4"],
                             "mos": [1.0, 2.0, 3.0, None]})
    with fs.open("catalog/manifest.csv", "w") as f:
        manifest.to_csv(f, index=False)
    io = ["--endpoint-url", s3_endpoint, "--storage-option", "key=testing", "--storage-option", "secret=testing"]
    run = ["--checkpoint", spec.checkpoint, "--actors", "1", "--batch-size", "2", *io]
    assert cli(["extract-inter", "--input", "s3://catalog/manifest.csv", "--cache", "s3://vqa/inter", *run]) == 0
    assert cli(["score", "--input", "s3://catalog/manifest.csv", "--cache", "s3://vqa/inter",
                "--output", "s3://vqa/scores", *run]) == 0
    printed = capsys.readouterr().out
    assert "extract-inter: 4 videos: 3 done, 1 failed, 0 skipped (already done) in" in printed
    assert "score: 4 videos: 3 done, 1 failed, 0 skipped (already done) in" in printed
    table = load_table("s3://vqa/scores", so).set_index("video_id")
    assert sorted(table.index) == ["bad", "s0", "s1", "s2"]
    assert (table.loc[["s0", "s1", "s2"], "status"] == "ok").all()
    assert "empty" in table.loc["bad", "error"]
    assert cli(["report", "--scores", "s3://vqa/scores", "--output", "s3://vqa/report", *io]) == 0
    assert fs.exists("vqa/report/report.json") and fs.exists("vqa/report/score_hist.png")
    # rescore twice on S3: the second run computes nothing
    state = ["rescore", "--input", "s3://catalog/manifest.csv", "--state", "s3://vqa/state", *run]
    assert cli(state) == 0 and cli(state) == 0
    import json

    done = json.loads(fs.cat_file("vqa/state/published/run.json"))
    assert (done["scored_this_run"], done["catalog_videos"]) == (0, 4)


@pytest.mark.slow
def test_resume_after_kill_on_s3(ray_local, s3_endpoint, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("resume")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        tv.write_video(src / f"r{i}.mp4", num_frames=40)
        fs.put(str(src / f"r{i}.mp4"), f"resume/videos/r{i}.mp4")
    so = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    proc = cli_subprocess(["extract-inter", "--input", "s3://resume/videos/", "--cache", "s3://resume/cache",
                            "--preset", "tiny", "--actors", "1", "--batch-size", "1", "--endpoint-url", s3_endpoint,
                            "--storage-option", "key=testing", "--storage-option", "secret=testing"])
    committed = _kill_after_first_commit(proc, KeyedTable("s3://resume/cache", so))
    assert committed < 5
    from pipeline.io.manifest import read_manifest

    summary = extract_inter(read_manifest("s3://resume/videos/", so), "s3://resume/cache", TINY,
                            RunOptions(storage_options=so, actors=1, batch_size=2))
    assert summary.skipped >= committed and summary.done + summary.skipped == 5
    _one_row_per_video_for_every_engine("s3://resume/cache", so, 5, s3_endpoint)
