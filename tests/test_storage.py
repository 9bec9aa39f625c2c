"""Storage layer: the filesystem helper and content keys (local, S3 on moto, HTTP). Tables: test_table.py."""

import os
import uuid

import pytest

from pipeline.io.storage import content_key, filesystem, make_key, stat_many


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket; returns (bucket name, storage_options)."""
    opts = {"endpoint_url": s3_endpoint}
    fs, _ = filesystem("s3://x", opts)
    name = f"t-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return name, opts


# ---- filesystem ----------------------------------------------------------------------------------


def test_filesystem_local_and_s3_options(tmp_path, s3_bucket):
    fs, path = filesystem(str(tmp_path / "a.txt"))
    assert path == str(tmp_path / "a.txt") and fs.protocol[0] == "file"
    bucket, opts = s3_bucket
    fs, path = filesystem(f"s3://{bucket}/p/a.txt", {**opts, "key": "testing", "secret": "testing", "region": "us-east-1"})
    assert path == f"{bucket}/p/a.txt"
    fs.pipe_file(path, b"hi")
    # same options -> the cached instance, not a new client per call
    fs2, _ = filesystem(f"s3://{bucket}/other", {**opts, "key": "testing", "secret": "testing", "region": "us-east-1"})
    assert fs2 is fs
    assert fs.cat_file(path) == b"hi"


def test_filesystem_endpoint_from_standard_env(s3_bucket, monkeypatch):
    bucket, opts = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", opts["endpoint_url"])
    fs, path = filesystem(f"s3://{bucket}/env.txt", {"skip_instance_cache": True})
    fs.pipe_file(path, b"env")
    fs2, _ = filesystem(f"s3://{bucket}/env.txt", opts)
    assert fs2.cat_file(path) == b"env"


# ---- content keys --------------------------------------------------------------------------------


def test_content_key_local_changes_with_file(tmp_path):
    p = tmp_path / "v.mp4"
    p.write_bytes(b"aaaa")
    k1 = content_key(str(p))
    assert content_key(str(p)) == k1  # stable
    st = os.stat(p)
    p.write_bytes(b"bbbb")  # same size, different bytes
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    k2 = content_key(str(p))
    assert k2 != k1
    p.write_bytes(b"bbbbb")  # different size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even with the same mtime
    assert content_key(str(p)) not in (k1, k2)


def test_content_key_s3_changes_on_reupload(s3_bucket):
    bucket, opts = s3_bucket
    uri = f"s3://{bucket}/videos/a.mp4"
    fs, path = filesystem(uri, opts)
    fs.pipe_file(path, b"first")
    k1 = content_key(uri, storage_options=opts)
    assert content_key(uri, storage_options=opts) == k1
    assert content_key(uri, fs.info(path), storage_options=opts) == k1  # from an info dict, no request
    fs.pipe_file(path, b"other")  # same size, new bytes
    k2 = content_key(uri, storage_options=opts)
    assert k2 != k1 and "etag=" in k2 and "size=5" in k2


def test_stat_many_local_and_s3(tmp_path, s3_bucket):
    bucket, opts = s3_bucket
    fs, _ = filesystem(f"s3://{bucket}", opts)
    s3_uris = []
    for i in range(5):
        fs.pipe_file(f"{bucket}/many/{i}.mp4", b"x" * (i + 1))
        s3_uris.append(f"s3://{bucket}/many/{i}.mp4")
    fs.pipe_file(f"{bucket}/few/a.mp4", b"abc")
    (tmp_path / "l.mp4").write_bytes(b"local")
    uris = s3_uris + [f"s3://{bucket}/few/a.mp4", f"s3://{bucket}/many/missing.mp4", f"s3://{bucket}/few/missing.mp4",
                      str(tmp_path / "l.mp4"), str(tmp_path / "missing.mp4")]
    got = stat_many(uris, opts, list_threshold=3)  # 'many' listed once, 'few' by HEAD
    assert list(got) == uris
    for i, u in enumerate(s3_uris):
        assert got[u].size == i + 1
        assert got[u].content_key == content_key(u, storage_options=opts)
    assert got[f"s3://{bucket}/few/a.mp4"].content_key == content_key(f"s3://{bucket}/few/a.mp4", storage_options=opts)
    assert got[str(tmp_path / "l.mp4")].size == 5
    assert got[f"s3://{bucket}/many/missing.mp4"] is None
    assert got[f"s3://{bucket}/few/missing.mp4"] is None
    assert got[str(tmp_path / "missing.mp4")] is None


def test_keys_are_deterministic():
    assert make_key("s3://b/v.mp4", "etag=1", "m1") == make_key("s3://b/v.mp4", "etag=1", "m1")
    assert make_key("ab", "c") != make_key("a", "bc")


def test_stat_many_over_http_never_trusts_a_folder_listing(tmp_path, http_catalog):
    """A CDN folder answers 404 (or 403, or an HTML page): each of many files gets its own HEAD and a
    version from Last-Modified and size; one the server sends no version for gets an error, not None."""
    for i in range(20):
        (tmp_path / f"v{i}.mp4").write_bytes(b"x" * (100 + i))
    url = http_catalog  # serves tmp_path
    uris = [f"{url}/v{i}.mp4" for i in range(20)] + [f"{url}/noversion/v0.mp4", f"{url}/gone.mp4"]
    stats = stat_many(uris, list_threshold=16)
    for i in range(20):
        s = stats[f"{url}/v{i}.mp4"]
        assert s.size == 100 + i and s.error is None and s.content_key.startswith("obj:mtime=")
    assert stats[f"{url}/gone.mp4"] is None
    bad = stats[f"{url}/noversion/v0.mp4"]
    assert bad.content_key == "" and "cannot identify a version" in bad.error
