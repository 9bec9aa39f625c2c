"""Input manifests: CSV / Parquet / JSON lines, directories and globs, locally and on moto S3."""

import math
import uuid

import pandas as pd
import pytest

from pipeline.io.manifest import ManifestError, read_manifest
from pipeline.io.storage import filesystem

ROWS = [
    {"uri": "clips/a.mp4", "video_id": "A", "mos": 3.5, "dataset": "konvid"},
    {"uri": "../other/b.mkv", "mos": 4.0, "dataset": "konvid"},  # video_id derived: "b"
    {"uri": "s3://elsewhere/c.mov", "video_id": "C"},  # absolute: kept
]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: moto's server
def where(request, tmp_path):
    """(base uri of a writable directory, storage_options, fs, fs path of base)."""
    if request.param == "local":
        base, opts = str(tmp_path / "m"), None
        fs, path = filesystem(base)
        fs.makedirs(path, exist_ok=True)
        return base, opts, fs, path
    endpoint = request.getfixturevalue("s3_endpoint")
    opts = {"endpoint_url": endpoint}
    bucket = f"m-{uuid.uuid4().hex[:12]}"
    fs, _ = filesystem(f"s3://{bucket}", opts)
    fs.mkdir(bucket)
    return f"s3://{bucket}/lists", opts, fs, f"{bucket}/lists"


def _put(fs, path, data):
    if fs.protocol[0] == "file":
        fs.makedirs(fs._parent(path), exist_ok=True)  # local pipe_file does not create parents
    fs.pipe_file(path, data)


def _write(fs, path, df, fmt):
    if fmt == "csv":
        data = df.to_csv(index=False).encode()
    elif fmt == "parquet":
        data = df.to_parquet(index=False)
    else:
        data = df.to_json(orient="records", lines=True).encode()
    _put(fs, path, data)


def _expected_uri(base, rel):
    if base.startswith("s3://"):
        bucket_dir = base
        parts = bucket_dir.split("/")
        return {"clips/a.mp4": f"{bucket_dir}/clips/a.mp4", "../other/b.mkv": "/".join(parts[:-1]) + "/other/b.mkv"}[rel]
    import os

    return os.path.normpath(os.path.join(base, rel))


@pytest.mark.parametrize("fmt,ext", [("csv", "csv"), ("parquet", "parquet"), ("jsonl", "jsonl")])
def test_manifest_formats_and_relative_uris(where, fmt, ext):
    base, opts, fs, path = where
    _write(fs, f"{path}/list.{ext}", pd.DataFrame(ROWS), fmt)
    df = read_manifest(f"{base}/list.{ext}", opts)
    assert list(df.columns[:4]) == ["video_id", "uri", "mos", "dataset"]
    assert df["video_id"].tolist() == ["A", "b", "C"]
    assert df["uri"].tolist() == [_expected_uri(base, "clips/a.mp4"), _expected_uri(base, "../other/b.mkv"), "s3://elsewhere/c.mov"]
    assert df["mos"].tolist()[:2] == [3.5, 4.0] and math.isnan(df["mos"].iloc[2])
    assert df["dataset"].tolist() == ["konvid", "konvid", None]


def test_json_array_and_extra_columns(tmp_path):
    p = tmp_path / "l.json"
    p.write_text('[{"uri": "x/1.webm", "width": 1920}, {"uri": "x/2.avi", "width": 1280}]')
    df = read_manifest(str(p))
    assert df["video_id"].tolist() == ["1", "2"]
    assert df["uri"].tolist() == [str(tmp_path / "x/1.webm"), str(tmp_path / "x/2.avi")]
    assert df["width"].tolist() == [1920, 1280] and df["dataset"].tolist() == [None, None]


def test_directory_and_glob(where):
    base, opts, fs, path = where
    for name in ["v/one.mp4", "v/sub/two.MKV", "v/sub/three.m4v", "v/notes.txt", "v/._one.mp4", "v/raw.yuv"]:
        _put(fs, f"{path}/{name}", b"x")
    df = read_manifest(f"{base}/v", opts)
    assert df["video_id"].tolist() == ["one", "three", "two"]
    assert df["uri"].tolist() == [f"{base}/v/one.mp4", f"{base}/v/sub/three.m4v", f"{base}/v/sub/two.MKV"]
    assert df["mos"].isna().all() and df["dataset"].tolist() == [None] * 3
    g = read_manifest(f"{base}/v/sub/*", opts)
    assert g["uri"].tolist() == [f"{base}/v/sub/three.m4v", f"{base}/v/sub/two.MKV"]
    assert read_manifest(f"{base}/v/**/*.mp4", opts)["video_id"].tolist() == ["one"]
    with pytest.raises(FileNotFoundError, match="no video files"):
        read_manifest(f"{base}/v/*.webm", opts)


def test_glob_of_manifests_is_concatenated(tmp_path):
    (tmp_path / "a.csv").write_text("uri,mos\nx.mp4,1\n")
    (tmp_path / "b.csv").write_text("uri,mos\ny.mp4,2\n")
    df = read_manifest(str(tmp_path / "*.csv"))
    assert df["video_id"].tolist() == ["x", "y"] and df["mos"].tolist() == [1.0, 2.0]


def test_duplicate_video_ids_are_listed(where):
    base, opts, fs, path = where
    _put(fs, f"{path}/d/a/clip.mp4", b"x")
    _put(fs, f"{path}/d/b/clip.mp4", b"x")
    _put(fs, f"{path}/d/b/ok.mp4", b"x")
    with pytest.raises(ManifestError, match=r"duplicate video_id .*clip: \[.*a/clip.mp4.*b/clip.mp4"):
        read_manifest(f"{base}/d", opts)


def test_given_video_id_resolves_name_clashes(tmp_path):
    (tmp_path / "m.csv").write_text("uri,video_id\na/clip.mp4,a1\nb/clip.mp4,\n")
    assert read_manifest(str(tmp_path / "m.csv"))["video_id"].tolist() == ["a1", "clip"]
    (tmp_path / "n.csv").write_text("uri,video_id\na/x.mp4,7\nb/y.mp4,7\n")
    with pytest.raises(ManifestError, match="duplicate video_id.*7"):
        read_manifest(str(tmp_path / "n.csv"))


def test_errors(where):
    base, opts, fs, path = where
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(f"{base}/nope.csv", opts)
    _put(fs, f"{path}/cols.csv", b"link,score\na.mp4,1\n")
    with pytest.raises(ManifestError, match=r"no uri column \(any of uri, url, path.*columns found: link, score"):
        read_manifest(f"{base}/cols.csv", opts)
    _put(fs, f"{path}/empty.csv", b"")
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(f"{base}/empty.csv", opts)
    _put(fs, f"{path}/header.csv", b"uri,mos\n")
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(f"{base}/header.csv", opts)
    _put(fs, f"{path}/list.xlsx", b"x")
    with pytest.raises(ManifestError, match="unknown extension '.xlsx'"):
        read_manifest(f"{base}/list.xlsx", opts)
    _put(fs, f"{path}/badmos.csv", b"uri,mos\na.mp4,good\n")
    with pytest.raises(ManifestError, match="non-numeric mos"):
        read_manifest(f"{base}/badmos.csv", opts)
    _put(fs, f"{path}/nouri.jsonl", b'{"uri": "a.mp4"}\n{"uri": ""}\n')
    with pytest.raises(ManifestError, match="empty uri in row 1"):
        read_manifest(f"{base}/nouri.jsonl", opts)


def test_column_names_match_case_insensitively_with_aliases(tmp_path):
    for header in ("URI,MOS", "Url,Mos", "path,mos", "File Name,Mean-Opinion-Score", "filepath,MOS"):
        (tmp_path / "m.csv").write_text(f"{header}\na.mp4,3.5\nb.mp4,2\n")
        df = read_manifest(str(tmp_path / "m.csv"))
        assert df.columns[:4].tolist() == ["video_id", "uri", "mos", "dataset"], header
        assert df["uri"].tolist() == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")] and df["mos"].tolist() == [3.5, 2.0]
    (tmp_path / "ids.csv").write_text("ID,URI,Dataset\nv1,a.mp4,k\n")
    assert read_manifest(str(tmp_path / "ids.csv"))[["video_id", "dataset"]].values.tolist() == [["v1", "k"]]
    (tmp_path / "num.csv").write_text("id,path\n007,a.mp4\n,b.mp4\n12,c.mp4\n")  # ids stay text
    assert read_manifest(str(tmp_path / "num.csv"))["video_id"].tolist() == ["007", "b", "12"]
    (tmp_path / "content.csv").write_text("uri,name,mos\na.mp4,park,3\nb.mp4,park,4\n")  # name: a content
    df = read_manifest(str(tmp_path / "content.csv"))
    assert df["video_id"].tolist() == ["a", "b"] and df["name"].tolist() == ["park", "park"]
    (tmp_path / "both.csv").write_text("url,path\na.mp4,b.mp4\n")
    with pytest.raises(ManifestError, match="columns 'url', 'path' could all be 'uri'"):
        read_manifest(str(tmp_path / "both.csv"))
    (tmp_path / "exact.csv").write_text("uri,path\na.mp4,elsewhere/b.mp4\n")  # the exact name wins
    df = read_manifest(str(tmp_path / "exact.csv"))
    assert df["uri"].tolist() == [str(tmp_path / "a.mp4")] and df["path"].tolist() == ["elsewhere/b.mp4"]


def test_a_file_listed_twice_is_one_video(tmp_path, caplog):
    (tmp_path / "m.csv").write_text("uri,mos\na.mp4,\nb.mp4,4\na.mp4,3\n./a.mp4,\n")
    with caplog.at_level("WARNING", logger="securevqa.io"):
        df = read_manifest(str(tmp_path / "m.csv"))
    assert df["video_id"].tolist() == ["a", "b"] and df["mos"].tolist() == [3.0, 4.0]  # the label is kept
    assert "lists 2 video(s) more than once" in caplog.text
    (tmp_path / "n.csv").write_text("uri,mos\na.mp4,3\na.mp4,5\n")
    with pytest.raises(ManifestError, match="listed more than once with different mos or dataset, e.g. 'a'"):
        read_manifest(str(tmp_path / "n.csv"))


def test_cli_says_what_is_wrong_in_one_line_and_exits_2(tmp_path, capsys):
    from jobs.cli import main

    (tmp_path / "m.csv").write_text("link,score\na.mp4,1\n")
    for manifest in (tmp_path / "m.csv", tmp_path / "missing.csv"):
        code = main(["score", "--input", str(manifest), "--cache", str(tmp_path / "c"), "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("securevqa: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


def test_directories_find_broadcast_dvd_and_raw_stream_files(tmp_path):
    names = {"cap.ts", "bc.M2TS", "dvd.vob", "clip.mpg", "raw.h264", "cam.hevc", "old.flv"}
    for name in (*names, "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert {p.rsplit("/", 1)[1] for p in read_manifest(str(tmp_path))["uri"]} == names
