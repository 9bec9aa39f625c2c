"""Dataset label files -> manifests: reference 4-field labels, official CSVs, generic CSV/TSV, errors."""

import os
import re
import uuid

import numpy as np
import pandas as pd
import pytest

from pipeline.training.datasets import DATASET_KINDS, LabelFileError, random_splits, read_labels
from pipeline.io.storage import filesystem

ROOT = "/data/videos"  # video roots are only joined, never read


def _write(tmp_path, name: str, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return str(path)


def _records(df: pd.DataFrame) -> list[tuple]:
    return list(df.itertuples(index=False, name=None))


# --------------------------------------------------------------------------------------------------
# reference labels: "name, x, y, MOS"


def test_lsvq_reference_labels_split_from_file_name(tmp_path):
    # lines as in examplar_data_labels/LSVQ/labels_test.txt
    text = "yfcc-batch1/747.mp4, -1, -1, 67.75\nia-batch1/12.mp4, -1, -1, 50.903225806451594\n"
    df = read_labels("lsvq", _write(tmp_path, "labels_test.txt", text), ROOT)
    assert list(df.columns) == ["video_id", "uri", "mos", "dataset", "split"]
    assert _records(df) == [
        ("yfcc-batch1/747", f"{ROOT}/yfcc-batch1/747.mp4", 67.75, "LSVQ", "test"),
        ("ia-batch1/12", f"{ROOT}/ia-batch1/12.mp4", 50.903225806451594, "LSVQ", "test"),
    ]
    assert df["mos"].dtype == np.float64


@pytest.mark.parametrize(
    ("file_name", "split"),
    [
        ("train_labels.txt", "train"),  # SecureVQA
        ("labels_train.txt", "train"),
        ("labels_test.txt", "test"),
        ("labels_1080p.txt", "test_1080p"),
        ("test_attack_ltest1080p.txt", "test_1080p"),
        ("labels.txt", None),  # DOVER's LSVQ/labels.txt names no split
    ],
)
def test_lsvq_split_inferred_from_reference_file_name(tmp_path, file_name, split):
    path = _write(tmp_path, file_name, "yfcc-batch1/1.mp4, -1, -1, 60.0\n")
    assert read_labels("lsvq", path, ROOT)["split"].tolist() == [split]


def test_split_argument_overrides_file_name(tmp_path):
    path = _write(tmp_path, "labels_test.txt", "yfcc-batch1/1.mp4, -1, -1, 60.0\n")
    assert read_labels("lsvq", path, ROOT, split="train")["split"].tolist() == ["train"]
    kv = _write(tmp_path, "kv.txt", "1.mp4, 8.0, 24.0, 3.0\n")
    assert read_labels("konvid1k", kv, ROOT, split="fold3")["split"].tolist() == ["fold3"]
    assert read_labels("konvid1k", kv, ROOT)["split"].tolist() == [None]


def test_invalid_lsvq_split_is_rejected(tmp_path):
    path = _write(tmp_path, "labels.txt", "a.mp4, -1, -1, 1\n")
    with pytest.raises(ValueError, match=r"unknown LSVQ split 'val'.*train, test, test_1080p"):
        read_labels("lsvq", path, ROOT, split="val")


def test_livevqc_reference_keeps_folder_in_video_id(tmp_path):
    # examplar_data_labels/LIVE_VQC/labels.txt: duration, frame rate, MOS
    text = "Video/A001.mp4, 10.002367, 30.0, 80.232\nVideo/B054.mp4, 10.003333, 120.0, 27.2126\n"
    df = read_labels("LIVE-VQC", _write(tmp_path, "labels.txt", text), "/d/LIVE_VQC/")
    assert _records(df) == [
        ("Video/A001", "/d/LIVE_VQC/Video/A001.mp4", 80.232, "LIVE-VQC", None),
        ("Video/B054", "/d/LIVE_VQC/Video/B054.mp4", 27.2126, "LIVE-VQC", None),
    ]


def test_reference_whitespace_crlf_bom_and_blank_lines(tmp_path):
    text = "\ufeff7495255120.mp4, 8.008, 23.976, 2.42\r\n  5223525504.mp4 ,8.008,29.97,  3.08  \r\n\r\n6971905222,1,2,2.6\r\n\r\n"
    df = read_labels("KoNViD-1k", _write(tmp_path, "labels_all.txt", text), ROOT)
    assert df["video_id"].tolist() == ["7495255120", "5223525504", "6971905222"]
    assert df["uri"].tolist() == [f"{ROOT}/7495255120.mp4", f"{ROOT}/5223525504.mp4", f"{ROOT}/6971905222.mp4"]
    assert df["mos"].tolist() == [2.42, 3.08, 2.6]
    assert df["dataset"].tolist() == ["KoNViD-1k"] * 3


def test_extension_handling(tmp_path):
    text = (
        "Sports_2160P-4e9f_crf_10_ss_00_t_20.0.mp4, -1, -1, 4.405\n"  # SecureVQA YouTubeUGC/labels.txt
        "Vlog_2160P-19f9, -1, -1, 3.919\n"  # no extension: the kind's default (.mkv originals)
        "Gaming_360P-3794_crf_10_ss_00_t_20.0, -1, -1, 1.475\n"  # '.0' is not an extension
    )
    path = _write(tmp_path, "labels.txt", text)
    df = read_labels("youtube_ugc", path, ROOT)
    assert df["video_id"].tolist() == [
        "Sports_2160P-4e9f_crf_10_ss_00_t_20.0", "Vlog_2160P-19f9", "Gaming_360P-3794_crf_10_ss_00_t_20.0"
    ]
    assert df["uri"].tolist() == [
        f"{ROOT}/Sports_2160P-4e9f_crf_10_ss_00_t_20.0.mp4",
        f"{ROOT}/Vlog_2160P-19f9.mkv",
        f"{ROOT}/Gaming_360P-3794_crf_10_ss_00_t_20.0.mkv",
    ]
    assert read_labels("yt-ugc", path, ROOT, ext="mp4")["uri"].tolist()[1] == f"{ROOT}/Vlog_2160P-19f9.mp4"
    assert read_labels("yt-ugc", path, ROOT, ext="")["uri"].tolist()[1] == f"{ROOT}/Vlog_2160P-19f9"
    suffixed = read_labels("yt-ugc", path, ROOT, ext="_crf_10_ss_00_t_20.0.mp4")
    assert suffixed["uri"].tolist()[1] == f"{ROOT}/Vlog_2160P-19f9_crf_10_ss_00_t_20.0.mp4"
    assert suffixed["uri"].tolist()[0] == f"{ROOT}/Sports_2160P-4e9f_crf_10_ss_00_t_20.0.mp4"  # had one


def test_relative_video_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "l.txt", "a.mp4, 0, 0, 1.5\n")
    df = read_labels("konvid", "l.txt", "videos")
    assert df["uri"].tolist() == [os.path.join(str(tmp_path), "videos", "a.mp4")]


# --------------------------------------------------------------------------------------------------
# official CSVs


LSVQ_HEADER = (
    "name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos,frame_number,fn_last_frame,left_p1,right_p1,top_p1,"
    "bottom_p1,start_p1,end_p1,left_p2,right_p2,top_p2,bottom_p2,start_p2,end_p2,left_p3,right_p3,top_p3,"
    "bottom_p3,start_p3,end_p3,top_vid,left_vid,bottom_vid,right_vid,start_vid,end_vid,is_test,is_valid"
)
LSVQ_ROW = (
    '{name},"[15, 527, 421, 709, 0, 200]","[0, 1280, 0, 720, 101, 181]","[170, 682, 432, 720, 120, 200]",'
    "720,1280,57.9189189189189,64.5428571428571,60.4117647058824,{mos},200,{name}/image_00200,15,527,421,709,"
    "0,200,0,1280,0,720,101,181,170,682,432,720,120,200,0,0,720,1280,0,200,True,True"
)


@pytest.mark.parametrize(
    ("file_name", "split"),
    [("LSVQ_whole_train.csv", "train"), ("LSVQ_whole_test.csv", "test"), ("LSVQ_whole_test_1080p.csv", "test_1080p")],
)
def test_lsvq_official_csv(tmp_path, file_name, split):
    text = "\n".join([LSVQ_HEADER, LSVQ_ROW.format(name="yfcc-batch1/747", mos="67.75"),
                      LSVQ_ROW.format(name="ia-batch1/3", mos="50.5")]) + "\n"
    df = read_labels("LSVQ", _write(tmp_path, file_name, text, encoding="utf-8-sig"), "s3://bucket/lsvq/")
    assert _records(df) == [
        ("yfcc-batch1/747", "s3://bucket/lsvq/yfcc-batch1/747.mp4", 67.75, "LSVQ", split),  # 'mos', not 'mos_p1'
        ("ia-batch1/3", "s3://bucket/lsvq/ia-batch1/3.mp4", 50.5, "LSVQ", split),
    ]


def test_konvid_official_mos_csv(tmp_path):
    text = '"flickr_id","mos"\n"3339962845","4.6400000000"\n"8171831850","4.4440298510"\n'
    df = read_labels("konvid-1k", _write(tmp_path, "KoNViD_1k_mos.csv", text), ROOT)
    assert _records(df) == [
        ("3339962845", f"{ROOT}/3339962845.mp4", 4.64, "KoNViD-1k", None),
        ("8171831850", f"{ROOT}/8171831850.mp4", 4.444029851, "KoNViD-1k", None),
    ]


def test_youtube_ugc_csv_export_of_mos_sheet(tmp_path):
    text = "vid,category,resolution,MOS full,MOS chunk 00\nVlog_2160P-19f9,Vlog,2160,3.919,3.8\n"
    df = read_labels("YouTube-UGC", _write(tmp_path, "ugc_mos.csv", text), ROOT)
    assert _records(df) == [("Vlog_2160P-19f9", f"{ROOT}/Vlog_2160P-19f9.mkv", 3.919, "YouTube-UGC", None)]


def test_livevqc_csv_export(tmp_path):
    df = read_labels("livevqc", _write(tmp_path, "vqc.csv", "File,MOS\nA001.mp4,80.232\nB054.mp4,27.2126\n"), ROOT)
    assert _records(df) == [
        ("A001", f"{ROOT}/A001.mp4", 80.232, "LIVE-VQC", None),
        ("B054", f"{ROOT}/B054.mp4", 27.2126, "LIVE-VQC", None),
    ]


@pytest.mark.parametrize(("suffix", "hint"), [(".xlsx", "Excel"), (".mat", "MATLAB")])
def test_binary_label_formats_are_refused_with_a_hint(tmp_path, suffix, hint):
    path = _write(tmp_path, "labels" + suffix, "x")
    with pytest.raises(LabelFileError, match=rf"labels{re.escape(suffix)}: {hint}.*CSV"):
        read_labels("youtube_ugc", path, ROOT)


# --------------------------------------------------------------------------------------------------
# generic csv


def test_generic_csv_custom_columns_and_split_col(tmp_path):
    text = "clip,quality,fold,notes\nx/a,3.5,train,ok\nx/b.mkv,4,,\nx/c,1e0,test,\n"
    df = read_labels("csv", _write(tmp_path, "my_set.csv", text), ROOT,
                     name_col="clip", mos_col="quality", split_col="fold", ext=".mp4")
    assert _records(df) == [
        ("x/a", f"{ROOT}/x/a.mp4", 3.5, "my_set", "train"),
        ("x/b", f"{ROOT}/x/b.mkv", 4.0, "my_set", None),
        ("x/c", f"{ROOT}/x/c.mp4", 1.0, "my_set", "test"),
    ]
    assert read_labels("csv", str(tmp_path / "my_set.csv"), ROOT, name_col="clip", mos_col="quality",
                       split_col="fold", split="all")["split"].tolist() == ["all"] * 3


@pytest.mark.parametrize(
    "header", ["filename,score", "Video_Name,MOS", "file , Mos", "path,mean opinion score", "video,mos_full"]
)
def test_generic_csv_synonym_columns(tmp_path, header):
    df = read_labels("csv", _write(tmp_path, "s.csv", f"{header}\na.mp4,2.5\n"), ROOT, dataset="Mine")
    assert _records(df) == [("a", f"{ROOT}/a.mp4", 2.5, "Mine", None)]


def test_generic_tsv(tmp_path):
    df = read_labels("tsv", _write(tmp_path, "t.tsv", "name\tmos\tsplit\nclip 1.mp4\t4.25\tx\n"), ROOT)
    assert _records(df) == [("clip 1", f"{ROOT}/clip 1.mp4", 4.25, "t", None)]  # no split_col given


def test_dmos_is_not_auto_detected(tmp_path):
    path = _write(tmp_path, "d.csv", "filename,dmos\na.mp4,20\n")
    with pytest.raises(LabelFileError, match=r"d\.csv: no MOS column .*'dmos'.*DMOS .*not auto-detected"):
        read_labels("csv", path, ROOT)
    assert read_labels("csv", path, ROOT, mos_col="dmos")["mos"].tolist() == [20.0]  # explicit: as is


def test_explicit_column_must_exist(tmp_path):
    path = _write(tmp_path, "c.csv", "name,mos\na,1\n")
    with pytest.raises(LabelFileError, match=r"c\.csv: no video name column 'clip' .*columns: \['name', 'mos'\]"):
        read_labels("csv", path, ROOT, name_col="clip")
    with pytest.raises(LabelFileError, match=r"no split column 'fold'"):
        read_labels("csv", path, ROOT, split_col="fold")


# --------------------------------------------------------------------------------------------------
# errors


def test_malformed_reference_line_names_file_line_and_text(tmp_path):
    path = _write(tmp_path, "labels.txt", "a.mp4, 1, 2, 3.0\n\nb.mp4, 1, 2\n")
    with pytest.raises(LabelFileError, match=r"labels\.txt, line 3: expected 4 comma-separated fields.*got 3: 'b\.mp4, 1, 2'"):
        read_labels("konvid1k", path, ROOT)


def test_unrecognised_first_line_is_reported_as_line_1(tmp_path):
    path = _write(tmp_path, "q.csv", "clip,quality\na,1\n")
    with pytest.raises(LabelFileError, match=r"q\.csv, line 1: expected 4 .*header.*got 2: 'clip,quality'"):
        read_labels("csv", path, ROOT)


@pytest.mark.parametrize("bad", ["abc", "", "nan", "inf"])
def test_bad_mos_names_file_and_line(tmp_path, bad):
    path = _write(tmp_path, "labels.txt", f"a.mp4, 1, 2, 3.0\nb.mp4, 1, 2, {bad}\n")
    with pytest.raises(LabelFileError, match=r"labels\.txt, line 2: (non-numeric MOS|MOS must be a finite).*'b\.mp4, 1, 2,"):
        read_labels("lsvq", path, ROOT)


def test_bad_mos_in_csv(tmp_path):
    path = _write(tmp_path, "k.csv", '"flickr_id","mos"\n"1","4.0"\n"2","n/a"\n')
    with pytest.raises(LabelFileError, match=r"k\.csv, line 3: non-numeric MOS 'n/a'"):
        read_labels("konvid1k", path, ROOT)


def test_csv_row_with_wrong_field_count(tmp_path):
    path = _write(tmp_path, "c.csv", "name,mos\na,1\nb,2,extra\n")
    with pytest.raises(LabelFileError, match=r"c\.csv, line 3: expected 2 fields as in the header \(line 1\), got 3"):
        read_labels("csv", path, ROOT)


def test_empty_name(tmp_path):
    path = _write(tmp_path, "labels.txt", " , -1, -1, 3\n")
    with pytest.raises(LabelFileError, match=r"labels\.txt, line 1: empty video name"):
        read_labels("lsvq", path, ROOT)


@pytest.mark.parametrize("text", ["", "\n \n\t\n", "\ufeff"])
def test_empty_file(tmp_path, text):
    with pytest.raises(LabelFileError, match=r"empty label file: .*labels\.txt"):
        read_labels("lsvq", _write(tmp_path, "labels.txt", text), ROOT)


def test_header_only(tmp_path):
    with pytest.raises(LabelFileError, match=r"no rows in label file .*h\.csv"):
        read_labels("csv", _write(tmp_path, "h.csv", "name,mos\n\n"), ROOT)


def test_duplicates_are_listed_with_lines(tmp_path):
    text = "a.mp4, 0, 0, 1\nb.mp4, 0, 0, 2\na, 0, 0, 3\nb.mp4, 0, 0, 4\nc.mp4, 0, 0, 5\n"
    expected = r"duplicate video names in .*labels\.txt \(2 names\): 'a' \(lines 1, 3\); 'b' \(lines 2, 4\)"
    with pytest.raises(LabelFileError, match=expected):
        read_labels("konvid1k", _write(tmp_path, "labels.txt", text), ROOT)


def test_unknown_kind_lists_kinds(tmp_path):
    path = _write(tmp_path, "labels.txt", "a.mp4, 0, 0, 1\n")
    with pytest.raises(ValueError, match=r"unknown dataset kind 'cvd2014'.*lsvq, konvid1k, livevqc, youtube_ugc, csv"):
        read_labels("cvd2014", path, ROOT)


def test_missing_label_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_labels("lsvq", str(tmp_path / "nope.txt"), ROOT)


@pytest.mark.parametrize(
    ("alias", "dataset"),
    [("LSVQ", "LSVQ"), ("KoNViD-1k", "KoNViD-1k"), ("konvid_1k", "KoNViD-1k"), ("Live-VQC", "LIVE-VQC"),
     ("live_vqc", "LIVE-VQC"), ("youtube-ugc", "YouTube-UGC"), ("YT-UGC", "YouTube-UGC"), ("CSV", "labels")],
)
def test_kind_aliases(tmp_path, alias, dataset):
    path = _write(tmp_path, "labels.txt", "a.mp4, 0, 0, 1\n")
    assert read_labels(alias, path, ROOT)["dataset"].tolist() == [dataset]


def test_dataset_kinds():
    assert DATASET_KINDS == ("lsvq", "konvid1k", "livevqc", "youtube_ugc", "csv")


# --------------------------------------------------------------------------------------------------
# S3


def test_labels_and_videos_on_s3(s3_endpoint):
    opts = {"endpoint_url": s3_endpoint}
    bucket = f"l-{uuid.uuid4().hex[:12]}"
    fs, _ = filesystem(f"s3://{bucket}", opts)
    fs.mkdir(bucket)
    fs.pipe_file(f"{bucket}/meta/LSVQ_whole_test_1080p.csv",
                 (LSVQ_HEADER + "\n" + LSVQ_ROW.format(name="yfcc-batch1/722", mos="78.77") + "\n").encode())
    df = read_labels("lsvq", f"s3://{bucket}/meta/LSVQ_whole_test_1080p.csv", f"s3://{bucket}/videos",
                     storage_options=opts)
    assert _records(df) == [("yfcc-batch1/722", f"s3://{bucket}/videos/yfcc-batch1/722.mp4", 78.77, "LSVQ", "test_1080p")]
    with pytest.raises(LabelFileError, match=rf"s3://{bucket}/meta/bad\.txt, line 1: non-numeric MOS"):
        fs.pipe_file(f"{bucket}/meta/bad.txt", b"a.mp4, 0, 0, x\n")
        read_labels("lsvq", f"s3://{bucket}/meta/bad.txt", f"s3://{bucket}/videos", storage_options=opts)


# --------------------------------------------------------------------------------------------------
# random splits


def test_random_splits_properties():
    splits = random_splits(23, seed=7)
    assert len(splits) == 10
    for train, test in splits:
        assert len(train) == round(23 * 0.8) == 18 and len(test) == 5
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert not set(train) & set(test)
        assert sorted([*train, *test]) == list(range(23))
        assert list(train) == sorted(train) and list(test) == sorted(test)
    assert len({tuple(test) for _, test in splits}) == 10  # successive splits differ


def test_random_splits_deterministic_per_seed_and_dataframe_input():
    a = random_splits(50, n_splits=3, seed=1)
    b = random_splits(pd.DataFrame({"x": range(50)}), n_splits=3, seed=1)
    c = random_splits(50, n_splits=3, seed=2)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    train, test = random_splits(10, n_splits=1, train_fraction=0.25)[0]
    assert (len(train), len(test)) == (2, 8)  # round(2.5) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 1}, "at least 2 rows"),
        ({"n": 10, "train_fraction": 0.0}, "strictly between 0 and 1"),
        ({"n": 10, "train_fraction": 1.0}, "strictly between 0 and 1"),
        ({"n": 3, "train_fraction": 0.9}, "both sides must be non-empty"),
        ({"n": 3, "train_fraction": 0.1}, "both sides must be non-empty"),
        ({"n": 10, "n_splits": 0}, "n_splits must be a positive int"),
    ],
)
def test_random_splits_validation(kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=match):
        random_splits(n, **kwargs)


def test_random_splits_rejects_non_integer_n():
    with pytest.raises(TypeError, match="n must be an int or a DataFrame"):
        random_splits(10.0)
